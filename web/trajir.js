// TrajIR's frontend extension (served from the pack's WEB_DIRECTORY).
// 1. TrajIR Reward Scorer: the stock frontend draws no `ui.text` of V1 nodes, so the scorer's table is shown in a
//    read-only text box on the node after each run (kept out of the saved widget values and of the prompt).
// 2. Template browser: custom-node templates are listed by file name only, and their description line repeats the
//    name; the cards of this pack's workflows get the one-line descriptions of template_descriptions.json.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const SCORED_NODES = new Set(["TrajIRRewardScorer"]);
const SCORES_WIDGET = "scores";

function scoresWidget(node) {
  let widget = node.widgets?.find((w) => w.name === SCORES_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, SCORES_WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;
    const box = widget.element ?? widget.inputEl;
    if (box) {
      box.readOnly = true;
      box.placeholder = "scores appear here after a run";
      box.style.fontFamily = "monospace";
    }
  }
  return widget;
}

async function loadDescriptions() {
  try {
    const response = await fetch(new URL("./template_descriptions.json", import.meta.url));
    return response.ok ? await response.json() : {};
  } catch (error) {
    console.warn("trajir: no template descriptions", error);
    return {};
  }
}

function describeTemplateCards(descriptions) {
  for (const card of document.querySelectorAll('[data-testid^="template-workflow-"]')) {
    const name = card.dataset.testid.slice("template-workflow-".length);
    const text = descriptions[name];
    const line = card.querySelector("p");
    if (text && line && line.textContent !== text) {
      line.textContent = text;
      line.title = text;
    }
  }
}

app.registerExtension({
  name: "trajir.display",
  async setup() {
    const descriptions = await loadDescriptions();
    if (!Object.keys(descriptions).length) return;
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        describeTemplateCards(descriptions);
      });
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SCORED_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      scoresWidget(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      scoresWidget(this).value = text;
      this.setDirtyCanvas?.(true, true);
    };
  },
});
