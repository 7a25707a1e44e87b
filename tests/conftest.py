import os

import pytest
import torch

# Facts of the official release the tests check the package against (key lists, configs), shipped with the tests:
# a clone has everything the suite needs. test_reference_data.py pins them.
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")
# With QWENIMAGE_NO_SKIPS=1 (CI) a skip fails the run, except the browser test's when no Chromium is installed.
ALLOWED_SKIPS = ("tests/test_browser.py",)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def reference_dir():
    return REFERENCE


@pytest.fixture(scope="session")
def tokenizer():
    """The real Qwen2.5 tokenizer, as the package ships it (true token counts for the text-encoder tests)."""
    from _tiny import TOKENIZER_DIR

    import transformers

    return transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def unexpected_skips(stats):
    return [r for r in stats.get("skipped", []) if not r.nodeid.replace(os.sep, "/").startswith(ALLOWED_SKIPS)]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if os.environ.get("QWENIMAGE_NO_SKIPS") == "1":
        bad = unexpected_skips(terminalreporter.stats)
        if bad:
            terminalreporter.section("skips not allowed (QWENIMAGE_NO_SKIPS=1)", red=True)
            for r in bad:
                reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
                terminalreporter.line(f"{r.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("QWENIMAGE_NO_SKIPS") == "1" and reporter is not None and unexpected_skips(reporter.stats):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
