"""create the worker schema

Revision ID: 0001
Revises: 
Create Date: 2026-12-04 20:55:27.114077
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_description', sa.String(length=64), nullable=True),
    sa.Column('state', sa.Enum('receiving', 'complete', 'analysed', name='study_state', native_enum=False, length=24), nullable=False),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completion_reason', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_study_study_instance_uid'))
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_state_last_received_at'), ['state', 'last_received_at'], unique=False)

    op.create_table('analysis',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.Enum('queued', 'started', 'localised', 'reported', 'delivered', 'delivery_failed', 'failed', name='analysis_state', native_enum=False, length=24), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('coarse_model', sa.String(length=128), nullable=True),
    sa.Column('fine_model', sa.String(length=128), nullable=True),
    sa.Column('ct_series_uid', sa.String(length=64), nullable=True),
    sa.Column('pet_series_uid', sa.String(length=64), nullable=True),
    sa.Column('seg_series_uid', sa.String(length=64), nullable=True),
    sa.Column('suv_factor', sa.Float(), nullable=True),
    sa.Column('suv_reason', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('complete_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lesions_extracted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('localised_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('report_written_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_name', sa.String(length=128), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_analysis_study_id_study'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analysis'))
    )
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analysis_queued_at'), ['queued_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_analysis_state_queued_at'), ['state', 'queued_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_analysis_study_id'), ['study_id'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('frame_of_reference_uid', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_series_study_id_study'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_study_id'), ['study_id'], unique=False)

    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('analysis_id', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['analysis_id'], ['analysis.id'], name=op.f('fk_event_analysis_id_analysis'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('file_path', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], name=op.f('fk_instance_series_id_series'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instance_sop_instance_uid'))
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_series_id'), ['series_id'], unique=False)

    op.create_table('lesion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('analysis_id', sa.Integer(), nullable=False),
    sa.Column('segment_number', sa.Integer(), nullable=False),
    sa.Column('segment_label', sa.String(length=64), nullable=True),
    sa.Column('component', sa.Integer(), nullable=False),
    sa.Column('tracking_uid', sa.String(length=64), nullable=False),
    sa.Column('centroid_x_mm', sa.Float(), nullable=False),
    sa.Column('centroid_y_mm', sa.Float(), nullable=False),
    sa.Column('centroid_z_mm', sa.Float(), nullable=False),
    sa.Column('bbox_mm', sa.JSON(), nullable=False),
    sa.Column('volume_ml', sa.Float(), nullable=False),
    sa.Column('voxels', sa.Integer(), nullable=False),
    sa.Column('suv_max', sa.Float(), nullable=True),
    sa.Column('suv_mean', sa.Float(), nullable=True),
    sa.Column('suv_peak', sa.Float(), nullable=True),
    sa.Column('hu_mean', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['analysis_id'], ['analysis.id'], name=op.f('fk_lesion_analysis_id_analysis'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lesion')),
    sa.UniqueConstraint('analysis_id', 'segment_number', 'component', name=op.f('uq_lesion_analysis_id_segment_number_component'))
    )
    with op.batch_alter_table('lesion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lesion_analysis_id'), ['analysis_id'], unique=False)

    op.create_table('report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('analysis_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('predecessor_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('file_path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['analysis_id'], ['analysis.id'], name=op.f('fk_report_analysis_id_analysis'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_report_sop_instance_uid'))
    )
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_analysis_id'), ['analysis_id'], unique=False)

    op.create_table('delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('destination_ae_title', sa.String(length=16), nullable=False),
    sa.Column('destination_host', sa.String(length=255), nullable=False),
    sa.Column('destination_port', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('success', 'warning', 'transient_failure', 'permanent_failure', name='delivery_status', native_enum=False, length=24), nullable=False),
    sa.Column('dicom_status', sa.Integer(), nullable=True),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('confirmed', sa.Boolean(), nullable=True),
    sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['report.id'], name=op.f('fk_delivery_report_id_report'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery'))
    )
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_attempted_at'), ['attempted_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_report_id'), ['report_id'], unique=False)

    op.create_table('finding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lesion_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.String(length=64), nullable=False),
    sa.Column('site_name', sa.String(length=128), nullable=False),
    sa.Column('laterality', sa.String(length=16), nullable=True),
    sa.Column('code_value', sa.String(length=32), nullable=False),
    sa.Column('code_scheme', sa.String(length=16), nullable=False),
    sa.Column('code_meaning', sa.String(length=128), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.Column('uncertain', sa.Boolean(), nullable=False),
    sa.Column('coarse_topk', sa.JSON(), nullable=False),
    sa.Column('fine_topk', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['lesion_id'], ['lesion.id'], name=op.f('fk_finding_lesion_id_lesion'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_finding')),
    sa.UniqueConstraint('lesion_id', name=op.f('uq_finding_lesion_id'))
    )
    with op.batch_alter_table('finding', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_finding_site_id'), ['site_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('finding', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_finding_site_id'))

    op.drop_table('finding')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_report_id'))
        batch_op.drop_index(batch_op.f('ix_delivery_attempted_at'))

    op.drop_table('delivery')
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_analysis_id'))

    op.drop_table('report')
    with op.batch_alter_table('lesion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lesion_analysis_id'))

    op.drop_table('lesion')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_series_id'))
        batch_op.drop_index(batch_op.f('ix_instance_received_at'))

    op.drop_table('instance')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_event_kind'))
        batch_op.drop_index(batch_op.f('ix_event_created_at'))

    op.drop_table('event')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_id'))

    op.drop_table('series')
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analysis_study_id'))
        batch_op.drop_index(batch_op.f('ix_analysis_state_queued_at'))
        batch_op.drop_index(batch_op.f('ix_analysis_queued_at'))

    op.drop_table('analysis')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_state_last_received_at'))

    op.drop_table('study')
