// Drives ComfyUI's own frontend in a headless Chromium (playwright-core) the way a new user would: opens the
// template browser, reads this pack's cards (title, description, thumbnail), opens each template named on the
// command line, presses Run and waits for its images and the Reward Scorer's scores on screen.
// Usage: node browser_templates.js URL SHOT_DIR TEMPLATE [TEMPLATE ...]; prints one JSON line.
const { chromium } = require("playwright-core");
const path = require("path");

const [url, shots, ...templates] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const slug = (name) => name.replace(/[^A-Za-z0-9]+/g, "_");

async function openTemplates(page) {
  // a first start opens the template browser by itself; otherwise the sidebar's Templates button does
  const anyCard = page.locator('[data-testid^="template-workflow-"]').first();
  if (!(await anyCard.isVisible().catch(() => false))) {
    await page.getByText("Templates", { exact: true }).first().click();
  }
  await anyCard.waitFor({ timeout: 60000 });
  await page.waitForTimeout(1000);
  // the pack's category in the side list: the clone folder's name
  const category = page.locator('[role="option"][aria-label="trajir"]');
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await category.click({ timeout: 5000 });
      break;
    } catch (error) {
      if (attempt === 4) throw error;
      await page.waitForTimeout(1000);
    }
  }
  await page.waitForTimeout(1500);
}

async function cards(page) {
  // the grid pages cards in as one scrolls and loads a thumbnail when its card is in view: visit each card
  const seen = new Map();
  for (let round = 0; round < 30; round++) {
    const batch = await page.evaluate(async () => {
      const out = [];
      for (const card of document.querySelectorAll('[data-testid^="template-workflow-"]')) {
        card.scrollIntoView({ block: "center" });
        await new Promise((resolve) => setTimeout(resolve, 250));
        const img = card.querySelector("img");
        out.push({
          name: card.dataset.testid.slice("template-workflow-".length),
          title: card.querySelector("h3")?.textContent.trim() ?? "",
          description: card.querySelector("p")?.textContent.trim() ?? "",
          thumbnail: img ? { src: img.currentSrc || img.src, width: img.naturalWidth } : null,
        });
      }
      return out;
    });
    const before = seen.size;
    for (const card of batch) {
      if (!seen.has(card.name) || (card.thumbnail?.width && !seen.get(card.name).thumbnail?.width)) {
        seen.set(card.name, card);
      }
    }
    if (seen.size === before && round > 0) break;
  }
  return [...seen.values()];
}

async function runTemplate(page, name) {
  await openTemplates(page);
  // the grid pages its cards in as one scrolls; the search box finds a card by name
  await page.getByPlaceholder("Search templates...").fill(name);
  await page.waitForTimeout(1000);
  await page.locator(`[data-testid="template-workflow-${name}"]`).click();
  await page.waitForFunction((n) => window.app?.graph?.nodes?.length > 0 && document.title.includes(n), name,
                             { timeout: 30000 }).catch(() => {});
  await page.waitForTimeout(2000);
  const missingModels = await page.getByText("Missing Models", { exact: false }).count();
  const loaded = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type));
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  const start = Date.now();
  const done = await page.waitForFunction(() => {
    const nodes = window.app.graph.nodes;
    const scorer = nodes.find((n) => n.type === "TrajIRRewardScorer");
    const scores = scorer?.widgets?.find((w) => w.name === "scores")?.value;
    const images = nodes.filter((n) => ["SaveImage", "PreviewImage"].includes(n.type));
    return scores && images.length && images.every((n) => n.imgs?.length > 0);
  }, null, { timeout: 240000, polling: 500 }).then(() => true, () => false);
  const seconds = (Date.now() - start) / 1000;
  await page.waitForTimeout(1000);
  const shown = await page.evaluate(() => {
    const nodes = window.app.graph.nodes;
    const scorer = nodes.find((n) => n.type === "TrajIRRewardScorer");
    const box = scorer?.widgets?.find((w) => w.name === "scores");
    return {
      scores: box?.value ?? "",
      scoresOnScreen: (box?.element ?? box?.inputEl)?.value ?? "",
      images: nodes.filter((n) => ["SaveImage", "PreviewImage"].includes(n.type))
        .map((n) => ({ type: n.type, count: n.imgs?.length ?? 0, width: n.imgs?.[0]?.naturalWidth ?? 0 })),
    };
  });
  const errors = await page.getByText("Prompt execution failed", { exact: false }).count()
    + await page.getByText("Prompt outputs failed validation", { exact: false }).count();
  // frame the graph's left part at a zoom where the canvas still draws text and widgets
  await page.evaluate(() => {
    const ds = window.app.canvas.ds;
    ds.scale = 0.8;
    ds.offset = [20, 10];
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(800);
  const shot = path.join(shots, `run_${slug(name)}.png`);
  await page.screenshot({ path: shot });
  return { name, loaded, missingModels, done, seconds, errors, shot, ...shown };
}

(async () => {
  const browser = await chromium.launch({
    executablePath: chromiumPath, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  await page.goto(url, { waitUntil: "networkidle" });
  await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 90000 });
  await page.waitForTimeout(3000);
  await page.screenshot({ path: path.join(shots, "start.png") });
  await openTemplates(page);
  await page.waitForTimeout(1500);  // thumbnails load
  const listed = await cards(page);
  const browserShot = path.join(shots, "templates_trajir.png");
  await page.screenshot({ path: browserShot });
  await page.keyboard.press("Escape");
  await page.waitForTimeout(1000);
  const runs = [];
  for (const name of templates) {
    runs.push(await runTemplate(page, name));
  }
  await browser.close();
  const extension = console_.filter((line) => line.includes("trajir"));
  console.log("TRAJIR_BROWSER " + JSON.stringify({ cards: listed, browserShot, runs, console: extension }));
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
