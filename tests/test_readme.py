"""Every code block of the README runs as written (issue 11), and the numbers the README shows are the numbers the
code prints (issue 15): the Python blocks run in order in one namespace, and the ``mestim`` command lines of the
shell blocks through the command line in-process. Blocks fenced as ``console`` are shapes of commands with
placeholders (DATA.csv), not runnable examples.

A number shown in the README is compared to the digits shown: ``0.0646`` holds for 0.06455 ≤ x < 0.06465, ``5e-10``
for 4.5e-10 ≤ x < 5.5e-10."""

import os
import re
import shlex
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# a number with a decimal point or an exponent (integers such as "95% CI" or "1 df" are labels, not results)
NUMBER = r"-?\d+\.\d+(?:e-?\d+)?|-?\d+e-?\d+"


def _readme():
    return open(README, encoding="utf-8").read()


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", _readme(), flags=re.S)


def shown(value: float, text: str) -> bool:
    """``value`` written to the digits of ``text`` (decimals, or a mantissa's decimals with an exponent) is
    ``text``."""
    if "e" in text:
        mantissa = text.split("e")[0]
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return float(f"{value:.{digits}e}") == float(text)
    return f"{value:.{len(text.split('.')[1])}f}" == text


def test_shown_compares_to_the_digits_shown():
    assert shown(0.064643, "0.0646") and not shown(0.06466, "0.0646")
    assert shown(4.69e-10, "5e-10") and not shown(4.4e-10, "5e-10")
    assert shown(57.5, "57.5") and shown(2.9549, "2.95") and not shown(2.956, "2.95")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Run the Python blocks in order in one namespace; record what each ``print`` call printed, by block and line."""
    import contextlib
    import io

    printed = {}
    namespace = {}
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))  # blocks that write files write them here
    try:
        for i, block in enumerate(_blocks("python")):
            def recording_print(*args, _block=i, **kwargs):
                out = io.StringIO()
                print(*args, **{**kwargs, "file": out})
                printed.setdefault((_block, sys._getframe(1).f_lineno), []).append(out.getvalue())

            namespace["print"] = recording_print
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(block, f"README python block {i + 1}", "exec"), namespace)
            except Exception as e:  # name the block that failed
                pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}")
    finally:
        os.chdir(cwd)
    return namespace, printed


def test_python_blocks_run(readme_run):
    assert _blocks("python")
    _, printed = readme_run
    assert printed


def test_printed_numbers_in_comments_are_what_the_code_prints(readme_run):
    """``print(x)  # ATE 0.490, SE 0.0646, ...``: the numbers of the comment appear, in that order and to the digits
    shown, among the numbers that line printed."""
    _, printed = readme_run
    checked = 0
    for i, block in enumerate(_blocks("python")):
        for line_no, line in enumerate(block.splitlines(), start=1):
            code, _, comment = line.partition("#")
            claims = re.findall(NUMBER, comment)
            if "print(" not in code or not claims:
                continue
            out = "".join(printed[(i, line_no)])
            values = iter(float(v) for v in re.findall(NUMBER, out))
            for claim in claims:  # an ordered subsequence: each claim matched after the previous one
                assert any(shown(v, claim) for v in values), (f"README python block {i + 1}, line {line_no}: {claim} "
                                                              f"is not what it prints:\n{line}\n{out}")
            checked += 1
    assert checked >= 2  # the ATE table and the Wald test


def test_transport_paragraph_is_what_the_bundled_run_gives(readme_run):
    """The paragraph under the transport command lines: pooled estimates with CIs, the range of the unadjusted
    per-trial effects, the homogeneity p-values."""
    namespace, _ = readme_run
    tr = namespace["tr"]  # the README's transport of the bundled data
    text = " ".join(_readme().split())
    n = rf"({NUMBER})"
    m = re.search(rf"the pooled estimates are {n} \({n}, {n}\) by the outcome model, {n} \({n}, {n}\) by weighting, "
                  rf"{n} \({n}, {n}\) doubly robust; unadjusted per-trial effects \({n} to {n}\) fail the homogeneity "
                  rf"test \(p = {n}\), the transported ones pass \(p = {n}–{n}\)", text)
    assert m, "the transport paragraph of the README changed: update this test"
    claims = list(m.groups())
    for e in ("outcome", "weighting", "dr"):
        row = tr.estimate(e, "pooled")
        for value in (row.estimate, row.ci_low, row.ci_high):
            claim = claims.pop(0)
            assert shown(value, claim), (e, value, claim)
    unadjusted = tr.table[(tr.table.estimator == "unadjusted") & (tr.table.trial != "pooled")].estimate
    p = {e: tr.homogeneity_test(e).p_value for e in ("unadjusted", "outcome", "weighting", "dr")}
    transported = [p["outcome"], p["weighting"], p["dr"]]
    for value, claim in zip((unadjusted.min(), unadjusted.max(), p["unadjusted"], min(transported),
                             max(transported)), claims):
        assert shown(value, claim), (value, claim)


def test_command_lines_run(tmp_path, monkeypatch, capsys):
    from estimators.cli import main

    monkeypatch.chdir(tmp_path)
    lines = [ln.split("#")[0].strip() for block in _blocks("bash") for ln in block.splitlines()]
    commands = [ln for ln in lines if ln.startswith("mestim ")]
    assert commands
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, (command, capsys.readouterr().err[-2000:])
