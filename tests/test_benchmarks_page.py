"""docs/benchmarks.md is the page a user reads (issue 41): short, and every table on it written by
a command that exists, with flags its script takes."""
import re
import shlex

from conftest import ROOT

PAGE = ROOT / "docs" / "benchmarks.md"
COMMAND = re.compile(r"^ {4}(?:\.venv/bin/)?python (benchmarks/\S+\.py.*)$|Command[^`]*`(?:\.venv/bin/)?python (benchmarks/[^`]+)`")


def sections(text: str) -> list[str]:
    return re.split(r"^#{2,3} ", text, flags=re.M)[1:]


def commands(section: str) -> list[str]:
    """The benchmark commands a section names: ``benchmarks/x.py`` and its arguments."""
    found = (COMMAND.search(line) for line in section.splitlines())
    return [m.group(1) or m.group(2) for m in found if m]


def test_page_is_short():
    assert len(PAGE.read_text().splitlines()) <= 300


def test_every_table_names_a_command_that_exists():
    tables = 0
    for section in sections(PAGE.read_text()):
        if not re.search(r"^\|", section, re.M):
            continue
        tables += 1
        title = section.splitlines()[0]
        named = commands(section)
        assert named, f"the table under {title!r} names no command"
        for command in named:
            script, *args = shlex.split(command)
            assert (ROOT / script).is_file(), f"{title!r}: {script} does not exist"
            source = (ROOT / script).read_text()
            for arg in args:
                flag = arg.split("=")[0]
                if flag.startswith("--"):
                    assert f'"{flag}"' in source, f"{title!r}: {script} takes no {flag}"
                elif arg.startswith("experiments/"):
                    assert (ROOT / arg).is_file(), f"{title!r}: {arg} does not exist"
    assert tables >= 5


def test_the_check_catches_a_missing_command(tmp_path):
    """The parser finds what it checks: a table without a command, a script or flag that is not there."""
    page = "## A\n\n    .venv/bin/python benchmarks/nope.py\n\n| a |\n|---|\n\n## B\n\n| b |\n"
    found = [(s.splitlines()[0], commands(s)) for s in sections(page)]
    assert found == [("A", ["benchmarks/nope.py"]), ("B", [])]
    assert not (ROOT / "benchmarks/nope.py").exists()
