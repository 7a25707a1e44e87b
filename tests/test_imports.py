"""Import structure: no circles between the command lines and between annotation, the taxonomy and the curation
engine (shared helpers sit a floor down), and a start-up that imports no torch for `--help` (timed figures are in
BENCHMARKS.md, from bench/bench_curation.py; never here)."""
import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_CODE = {"tests", "bench", "demo", "docs", "scripts", "workflows", "__pycache__"}


def _modules() -> dict[str, str]:
    """Dotted name (relative to the package root; "" for the root) -> file, for every module of the package."""
    out = {}
    for d, dirs, files in os.walk(REPO):
        dirs[:] = [x for x in dirs if x not in NOT_CODE and not x.startswith(".") and not x.endswith(".egg-info")]
        for f in files:
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(d, f), REPO)[:-3].replace(os.sep, ".")
                out[name.removesuffix("__init__").rstrip(".")] = os.path.join(d, f)
    return out


def _import_graph() -> dict[str, set[str]]:
    """Every relative import, at module level or inside a function (a circle through a lazy import is still one)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        pkg = name.split(".") if path.endswith("__init__.py") and name else name.split(".")[:-1]
        graph[name] = set()
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])
                for alias in node.names:
                    sub = ".".join([*base, alias.name])
                    graph[name].add(sub if sub in mods else ".".join(base))
    return graph


def _cycles(graph) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop(); on.discard(w); comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles_through_the_command_lines_or_the_data_room():
    # the evaluation suites' registry (a package importing its suites, which import it back) is another matter
    cycles = [c for c in _cycles(_import_graph()) if not all(m.startswith("training.eval.suites") for m in c)]
    assert cycles == []


def test_help_imports_no_torch():
    code = ("import sys\nfrom qwenimage.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'aiohttp', 'cv2') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_serve_is_listed_with_the_servers_own_help():
    import argparse

    from qwenimage.cli import SERVE_HELP
    from qwenimage.nodes.server import register_cli

    sub = argparse.ArgumentParser().add_subparsers()
    register_cli(sub)
    assert [a.help for a in sub._choices_actions] == [SERVE_HELP]


def test_the_trainers_own_entry_point_answers_like_qwenimage(tmp_path, capsys):
    from qwenimage.training.cli import main

    assert main([str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
