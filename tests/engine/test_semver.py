import pytest

from sidecar.engine.semver import SemVer


def test_numeric_order_not_lexical():
    assert SemVer.parse("1.10.0") > SemVer.parse("1.9.0")
    assert SemVer.parse("2.0.0") > SemVer.parse("1.99.99")


def test_prerelease_older_than_release_and_ordered():
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    parsed = [SemVer.parse(v) for v in chain]
    assert parsed == sorted(parsed)
    assert [str(v) for v in sorted(reversed(parsed))] == chain


def test_build_metadata_ignored_for_precedence():
    assert SemVer.parse("1.2.3+build.5") == SemVer.parse("1.2.3")
    assert str(SemVer.parse("1.2.3-rc.1+b7")) == "1.2.3-rc.1+b7"


@pytest.mark.parametrize("text", ["1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "a.b.c", "1.2.3.4", ""])
def test_invalid(text):
    with pytest.raises(ValueError, match="not a semantic version"):
        SemVer.parse(text)
