/** @type {AppTypes.Config} */

// OHIF Viewer 3.13 configuration for the viewer test: one DICOMweb data source
// on the page's own origin. The test's web server forwards /dicom-web/ and
// /wado to Orthanc, because Orthanc 1.10 sends no CORS headers.
const dicomWebRoot = `${window.location.origin}/dicom-web`;

window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: {
    interaction: 100,
    thumbnail: 5,
    prefetch: 10,
  },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc DICOMweb',
        name: 'orthanc',
        wadoUriRoot: `${window.location.origin}/wado`,
        qidoRoot: dicomWebRoot,
        wadoRoot: dicomWebRoot,
        // The Orthanc DICOMweb plugin 1.7 ignores includefield on QIDO-RS.
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {
          enabled: true,
          relativeResolution: 'studies',
        },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
