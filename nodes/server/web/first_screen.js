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
    if (loadingOurs) replaceContents(graph, ours.workflow);
  },
  loadedGraphNode(node) {
    if (loadingOurs) firstChoiceForUnknownValues(node);
  },
  afterConfigureGraph(missing) {
    loadingOurs = false;
    showMissing(missing);
  },
});
