// `qwenimage serve`'s first screen (issue 18). Only our server serves this folder (as the pack "qwenimage");
// inside ComfyUI it is not loaded and ComfyUI's own default graph stays.
//
// The frontend opens its built-in default graph, ComfyUI's own nodes, for a browser with no saved workflow and
// for "Load Default Workflow". None of those nodes exist here, so when that graph is being loaded we hand the
// frontend ours instead (beforeConfigureGraph may rewrite the graph data it is given): the graph the server
// picks at /qwenimage/first_screen. A workflow with node types this server lacks gets a message naming them;
// the server turns the frontend's own "install missing packs" warning off (Comfy.Workflow.ShowMissingNodesWarning),
// since packs cannot be installed here.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

let ours = null; // {name, workflow} from the server
let loadingOurs = false;

// The frontend's default graph, recognised by its nodes. We only read it, from window.comfyAPI (the table the
// frontend's scripts/*.js shims export); a frontend without it keeps its stock graph, which test_browser catches.
function nodeSignature(graph) {
  return JSON.stringify((graph?.nodes ?? []).map((n) => `${n.id}:${n.type}`).sort());
}

function isBuiltinDefault(graph) {
  const builtin = window.comfyAPI?.defaultGraph?.defaultGraph;
  return !!builtin && nodeSignature(graph) === nodeSignature(builtin);
}

function replaceContents(target, source) {
  for (const key of Object.keys(target)) delete target[key];
  Object.assign(target, structuredClone(source));
}

// The frontend's rule for its default graph, so that both ways in give the same graph: a file list that lacks
// the workflow's file name shows its first entry (a file that is there, or "(no files in <folder>/)").
function firstChoiceForUnknownValues(node) {
  for (const w of node.widgets ?? []) {
    const values = w.type === "combo" ? w.options?.values : null;
    if (Array.isArray(values) && values.length && !values.includes(w.value)) w.value = values[0];
  }
}

function missingTypesMessage(types) {
  return `This workflow uses node types this server does not have: ${types.join(", ")}. ` +
    "qwenimage serve runs the Qwen-Image nodes only (with Load Image, Save Image, Preview Image and a few " +
    "other basics); no node packs can be installed here. Open this workflow in ComfyUI, or start from a " +
    "Qwen-Image workflow: Browse Templates, under Qwen-Image.";
}

function showMissing(missing) {
  const types = [...new Set((missing ?? []).map((m) => (typeof m === "string" ? m : m?.type)).filter(Boolean))];
  if (!types.length) return;
  types.sort();
  app.extensionManager.toast.add({
    severity: "error",
    summary: "Nodes this server does not have",
    detail: missingTypesMessage(types),
  });
}

// Fit the whole graph into the visible canvas (issue 24: at a fixed zoom the output node was off-screen on a
// 1366 px window): clear of the sidebar and menus (MARGIN, screen px), never above 1x. The canvas draws graph
// point p at (p + offset) * scale.
const MARGIN = { left: 80, top: 110, right: 30, bottom: 40 };
const TITLE_HEIGHT = 30;

function fitView(graph, width, height) {
  const nodes = graph?.nodes ?? [];
  if (!nodes.length || !width || !height) return null;
  const x0 = Math.min(...nodes.map((n) => n.pos[0]));
  const y0 = Math.min(...nodes.map((n) => n.pos[1] - TITLE_HEIGHT));
  const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
  const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
  const w = width - MARGIN.left - MARGIN.right;
  const h = height - MARGIN.top - MARGIN.bottom;
  const scale = Math.min(1, w / (x1 - x0), h / (y1 - y0));
  return { scale, offset: [MARGIN.left / scale - x0, MARGIN.top / scale - y0] };
}

function canvasSize() {
  const el = app.canvas?.canvas;
  return [el?.clientWidth || window.innerWidth, el?.clientHeight || window.innerHeight];
}

function applyView(ds) {
  if (!ds || !app.canvas?.ds) return;
  app.canvas.ds.scale = ds.scale;
  app.canvas.ds.offset = [...ds.offset];
  app.canvas.setDirty(true, true);
}

app.registerExtension({
  name: "qwenimage.FirstScreen",
  async init() {
    try {
      const r = await api.fetchApi("/qwenimage/first_screen");
      if (r.ok) ours = await r.json();
      else console.warn(`qwenimage: no first-screen workflow (HTTP ${r.status})`);
    } catch (e) {
      console.warn("qwenimage: could not fetch the first-screen workflow", e);
    }
  },
  beforeConfigureGraph(graph) {
    loadingOurs = !!ours?.workflow && isBuiltinDefault(graph);
    if (loadingOurs) {
      replaceContents(graph, ours.workflow);
      const ds = fitView(graph, ...canvasSize());
      if (ds) (graph.extra ??= {}).ds = ds; // the view the frontend restores with the graph
    }
  },
  loadedGraphNode(node) {
    if (loadingOurs) firstChoiceForUnknownValues(node);
  },
  afterConfigureGraph(missing) {
    if (loadingOurs) {
      const ds = fitView(app.graph, ...canvasSize()); // the frontend's node sizes, once it has laid them out
      requestAnimationFrame(() => applyView(ds));
    }
    loadingOurs = false;
    showMissing(missing);
  },
});
