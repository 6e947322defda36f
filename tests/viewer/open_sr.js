// Open a study in OHIF Viewer 3.13, load each given SR series into the viewport and
// record what the viewer draws: overlay texts per slice, whether the CT rendered,
// console warnings and every request that was not to 127.0.0.1.
//
// Usage: node open_sr.js SETTINGS.json   (NODE_PATH must contain playwright-core)
// SETTINGS: baseUrl, studyInstanceUid, srSeriesNumbers, expectedSites, outDir, userDataDir.
// Writes outDir/summary.json and outDir/ohif-sr-<SeriesNumber>.png per SR. Exit
// status 0 when the CT rendered and every SR showed every expected site, 1
// otherwise, 2 on an error (then outDir/failure.png shows the page).
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = '/usr/bin/chromium';
const LOOPBACK = '127.0.0.1';
const OVERLAY_TEXT = '[data-cy="viewport-pane"] svg text';
const THUMBNAIL = '[data-cy^="study-browser-thumbnail"]';
// SNOMED CT "Finding site", the concept name of TID 1419 Finding Site items.
const FINDING_SITE_CONCEPT = '363698007';
const LABEL_WAIT_MS = 2000;
// A black or single-colour canvas has one or two grey levels; a windowed CT has many.
const RENDERED_GREY_LEVELS = 8;
const STEP_TIMEOUT_MS = 30000;

// Swiftshader renders WebGL without a GPU; the resolver rule turns every name
// except 127.0.0.1 into NXDOMAIN, a second fence besides the request filter below.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--use-angle=swiftshader',
  '--enable-unsafe-swiftshader',
  '--disable-dev-shm-usage',
  `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE ${LOOPBACK}`,
];

function elapsed(start) {
  return Math.round(Date.now() - start) / 1000;
}

// OHIF may show an "investigational use" banner and a guided tour on first start.
async function dismissPopups(page) {
  for (const name of ['Confirm and hide', 'Skip all']) {
    const button = page.getByRole('button', { name });
    if (await button.count()) {
      await button.first().click({ timeout: 5000 }).catch(() => {});
    }
  }
}

// One string per label, its lines (SVG tspans) joined by newlines.
async function overlayTexts(page) {
  return page.locator(OVERLAY_TEXT).evaluateAll(elements =>
    elements.map(element => {
      // After a longer label, OHIF can leave empty tspans in the reused text element.
      const lines = [...element.querySelectorAll('tspan')]
        .map(tspan => tspan.textContent)
        .filter(line => line.trim());
      return lines.length ? lines.join('\n') : element.textContent;
    }),
  );
}

// Compare the viewport canvas against a blank one: a rendered CT has many grey levels.
async function canvasStatistics(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('[data-cy="viewport-pane"] canvas');
    if (!canvas) return { found: false };
    const copy = document.createElement('canvas');
    copy.width = canvas.width;
    copy.height = canvas.height;
    const context = copy.getContext('2d');
    context.drawImage(canvas, 0, 0);
    const pixels = context.getImageData(0, 0, copy.width, copy.height).data;
    const levels = new Set();
    let nonBlack = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] || pixels[i + 1] || pixels[i + 2]) nonBlack += 1;
      levels.add(pixels[i]);
    }
    return {
      found: true,
      width: copy.width,
      height: copy.height,
      nonBlackFraction: nonBlack / (pixels.length / 4),
      greyLevels: levels.size,
    };
  });
}

// Poll the viewport canvas until it shows an image or STEP_TIMEOUT_MS passes.
async function waitForRenderedCanvas(page) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let statistics = await canvasStatistics(page);
  while (!(statistics.greyLevels >= RENDERED_GREY_LEVELS) && Date.now() < deadline) {
    await page.waitForTimeout(250);
    statistics = await canvasStatistics(page);
  }
  return statistics;
}

// In OHIF 3.13.2 the labels of a loaded SR sometimes stay undrawn until the
// viewport redraws. Scrolling one slice forward and back redraws it.
async function redrawBySliceScroll(page) {
  const box = await page.locator('[data-cy="viewport-pane"]').first().boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, 100);
  await page.waitForTimeout(300);
  await page.mouse.wheel(0, -100);
}

// Wait up to LABEL_WAIT_MS for overlay labels; then apply the redraw workaround
// (at most twice) and wait again.
async function waitForLabels(page, report) {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      await page.waitForSelector(OVERLAY_TEXT, { timeout: LABEL_WAIT_MS });
      return overlayTexts(page);
    } catch {
      report.redraws += 1;
      await redrawBySliceScroll(page);
    }
  }
  return [];
}

// OHIF 3.13 labels a Finding Site as "<concept name code value>: <code meaning>".
function missingSites(expectedSites, visits) {
  const lines = new Set(visits.flatMap(visit => visit.texts.flatMap(text => text.split('\n'))));
  return expectedSites.filter(site => !lines.has(`${FINDING_SITE_CONCEPT}: ${site}`));
}

// The instance label at the viewport's bottom right, "I:6 (7/12)"; empty when absent.
async function sliceLabel(page) {
  const overlay = page.locator('[data-cy="viewport-overlay-bottom-right"]').first();
  try {
    return (await overlay.innerText({ timeout: 5000 })).trim();
  } catch {
    return '';
  }
}

// Wait until the viewport shows another slice than `slice`, then give its labels 500 ms.
// Two measurements on one slice never change it, so the wait then ends after 5 s.
async function waitForSliceChange(page, slice) {
  await page
    .waitForFunction(
      previous => {
        const overlay = document.querySelector('[data-cy="viewport-overlay-bottom-right"]');
        return overlay && overlay.innerText.trim() !== previous;
      },
      slice,
      { timeout: 5000 },
    )
    .catch(() => {});
  await page.waitForTimeout(500);
}

// Visit the SR's measurements with the viewport's "next" arrow and record the labels
// drawn on each slice. Stop when every expected site was seen, or after one visit
// more than the number of expected sites.
async function collectMeasurementLabels(page, expectedSites, report, screenshotPath) {
  const visits = [];
  const maxVisits = Math.max(expectedSites.length, 1) + 1;
  for (let visit = 0; visit < maxVisits; visit += 1) {
    const texts = await waitForLabels(page, report);
    visits.push({ slice: await sliceLabel(page), texts });
    if (visit === 0) await page.screenshot({ path: screenshotPath });

    if (missingSites(expectedSites, visits).length === 0) break;

    const slice = visits[visits.length - 1].slice;
    try {
      await page.locator('[data-cy="viewport-action-arrows-right"]').first().click({
        timeout: 5000,
      });
    } catch {
      report.navigationFailed = true;
      break;
    }
    await waitForSliceChange(page, slice);
  }
  return visits;
}

// The SR badge's tooltip shows whether OHIF can add the SR to its measurement panel.
async function badgeTooltip(page) {
  const badge = page.locator('[data-cy="ModalityLoadBadge-default"]').first();
  if (!(await badge.count())) return null;
  await badge.hover();
  const tooltip = page.getByRole('tooltip').first();
  try {
    await tooltip.waitFor({ timeout: 3000 });
  } catch {
    return null;
  }
  return (await tooltip.innerText()).trim();
}

// Load one SR series into the viewport and read the labels of its measurements.
async function inspectReport(page, seriesNumber, settings) {
  const report = { seriesNumber, redraws: 0, navigationFailed: false };
  const thumbnail = page.locator(THUMBNAIL).filter({
    hasText: new RegExp(`S:\\s*${seriesNumber}(\\D|$)`),
  });
  report.thumbnailFound = (await thumbnail.count()) > 0;
  if (!report.thumbnailFound) {
    report.missingSites = settings.expectedSites;
    return report;
  }

  const start = Date.now();
  await thumbnail.first().dblclick();
  await dismissPopups(page);
  const screenshotPath = path.join(settings.outDir, `ohif-sr-${seriesNumber}.png`);
  report.measurements = await collectMeasurementLabels(
    page, settings.expectedSites, report, screenshotPath,
  );
  report.labelsS = elapsed(start);
  report.missingSites = missingSites(settings.expectedSites, report.measurements);
  report.badgeTooltip = await badgeTooltip(page);
  return report;
}

async function main() {
  const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const start = Date.now();
  const summary = {
    studyInstanceUid: settings.studyInstanceUid,
    expectedSites: settings.expectedSites,
    blockedRequests: [],
    consoleWarnings: [],
    pageErrors: [],
    timings: {},
    reports: [],
  };

  const context = await chromium.launchPersistentContext(settings.userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1200, height: 800 },
  });
  let page = null;
  try {
    await context.route('**/*', route => {
      const url = new URL(route.request().url());
      if (url.hostname === LOOPBACK || url.protocol === 'data:' || url.protocol === 'blob:') {
        return route.continue();
      }
      summary.blockedRequests.push(route.request().url());
      return route.abort('blockedbyclient');
    });

    page = context.pages()[0] || (await context.newPage());
    page.on('console', message => {
      if (['warning', 'error'].includes(message.type())) {
        summary.consoleWarnings.push(`${message.type()}: ${message.text()}`.slice(0, 500));
      }
    });
    page.on('pageerror', error => summary.pageErrors.push(String(error).slice(0, 500)));

    // Open the study and wait for the CT to render.
    const url = `${settings.baseUrl}/viewer?StudyInstanceUIDs=${settings.studyInstanceUid}`;
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector(THUMBNAIL, { timeout: STEP_TIMEOUT_MS });
    await dismissPopups(page);
    await page.waitForSelector('[data-cy="viewport-overlay-bottom-right"]', {
      timeout: STEP_TIMEOUT_MS,
    });
    summary.ct = await waitForRenderedCanvas(page);
    summary.timings.studyOpenedS = elapsed(start);
    summary.thumbnails = await page.locator(THUMBNAIL).allInnerTexts();

    for (const seriesNumber of settings.srSeriesNumbers) {
      summary.reports.push(await inspectReport(page, seriesNumber, settings));
    }

    summary.timings.totalS = elapsed(start);
    summary.passed =
      summary.ct.greyLevels >= RENDERED_GREY_LEVELS &&
      summary.blockedRequests.length === 0 &&
      summary.reports.every(report => report.thumbnailFound && report.missingSites.length === 0);
    return summary.passed ? 0 : 1;
  } catch (error) {
    summary.error = String(error).slice(0, 2000);
    if (page) await page.screenshot({ path: path.join(settings.outDir, 'failure.png') });
    throw error;
  } finally {
    fs.writeFileSync(path.join(settings.outDir, 'summary.json'), JSON.stringify(summary, null, 2));
    await context.close();
  }
}

main()
  .then(status => process.exit(status))
  .catch(error => {
    console.error(error);
    process.exit(2);
  });
