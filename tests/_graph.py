"""A plain graph executor that follows the links of an API-format prompt (what ComfyUI's does, minus caching and
validation), and the UI-to-API conversion the frontend performs, for the node-pack tests."""
import copy

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def _spec(cls) -> dict:
    s = cls.INPUT_TYPES()
    return {**s.get("required", {}), **s.get("optional", {})}


def is_widget(typ) -> bool:
    return isinstance(typ, list) or typ in WIDGET_TYPES or typ == "COMBO"


def run_prompt(prompt: dict, mappings: dict, workflow: dict | None = None):
    """Execute every output node and what it needs, once each. Returns (outputs, ui) by node id."""
    outputs, ui = {}, {}

    def run(nid):
        if nid in outputs:
            return outputs[nid]
        node = prompt[nid]
        cls = mappings[node["class_type"]]
        kwargs = {k: (run(v[0])[v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
        for name, kind in cls.INPUT_TYPES().get("hidden", {}).items():
            kwargs[name] = {"UNIQUE_ID": nid, "PROMPT": prompt,
                            "EXTRA_PNGINFO": {"workflow": workflow} if workflow else None}.get(kind)
        res = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(res, dict):
            ui[nid] = res.get("ui")
            res = res.get("result", ())
        outputs[nid] = tuple(res)
        return outputs[nid]

    for nid, node in prompt.items():
        if getattr(mappings[node["class_type"]], "OUTPUT_NODE", False):
            run(nid)
    return outputs, ui


def ui_to_api(workflow: dict, mappings: dict) -> dict:
    """The frontend's graphToPrompt, for our purposes: widget values mapped onto the widget inputs in
    INPUT_TYPES order (skipping the extra values of control_after_generate and upload widgets), links onto
    [source id, output slot]; frontend-only nodes (Note) dropped."""
    links = {l[0]: l for l in workflow["links"]}
    out = {}
    for node in workflow["nodes"]:
        if node["type"] == "Note":
            continue
        cls = mappings[node["type"]]
        spec = _spec(cls)
        inputs = {}
        values = list(node.get("widgets_values", []))
        for name, (typ, *opts) in spec.items():
            if not is_widget(typ):
                continue
            inputs[name] = values.pop(0)
            o = opts[0] if opts else {}
            if o.get("control_after_generate") or o.get("image_upload"):
                values.pop(0)
        assert not values, f"node {node['id']}: {len(values)} widget values left over"
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                l = links[inp["link"]]
                inputs[inp["name"]] = [str(l[1]), l[2]]
        out[str(node["id"])] = {"inputs": inputs, "class_type": node["type"]}
    return out


def speed_up(prompt: dict, steps: int = 2, size=(64, 48)) -> dict:
    """The same graph, cheaper: fewer steps and a small custom empty latent (tests run tiny models on a CPU)."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        if node["class_type"] == "QwenImageSampler":
            node["inputs"]["steps"] = steps
        if node["class_type"] == "QwenImageEmptyLatent":
            node["inputs"].update(aspect="custom", width=size[0], height=size[1])
    return p
