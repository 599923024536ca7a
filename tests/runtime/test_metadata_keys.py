"""The edgekd.* keys of a model's ONNX metadata are spelled in one module, edgekd/runtime/metadata.py;
every other module names them through its constants, so a key cannot drift between the
exporter that writes it and the bench that reads it."""

import re
from pathlib import Path

import edgekd

PACKAGE = Path(edgekd.__file__).parent
OWNER = PACKAGE / "runtime" / "metadata.py"

# a quoted string that starts with "edgekd." (any prefix: f, r, b), or an f-string that builds
# a key from a name ("edgekd.{name}")
KEY_LITERAL = re.compile(r"""(?<![\w])[rRbBfFuU]{0,2}["']edgekd\.(?P<rest>[\w-]*)(?P<version>/\d+)?|edgekd\.\{""")


# "edgekd.data.formats" names a module (edgekd list imports the registries by name), not a key
MODULES = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}


def key_literals(path: Path) -> list[str]:
    """'file:line: text' for each edgekd.* metadata key literal in `path`. Not keys: versioned
    file-format names ("edgekd.bench/1"), the public API's names ("edgekd.compress") and module
    paths ("edgekd.distill.terms")."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if any(not (match.group("version") or match.group("rest") in edgekd.__all__
                    or match.group("rest") in MODULES)
               for match in KEY_LITERAL.finditer(line)):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    return found


def test_only_runtime_metadata_spells_a_metadata_key():
    elsewhere = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != OWNER for hit in key_literals(path)]
    assert not elsewhere, ("edgekd.* metadata keys spelled outside edgekd/runtime/metadata.py; use its "
                           "constants:\n" + "\n".join(elsewhere))


def test_the_scan_sees_the_keys_where_they_live():
    hits = "\n".join(key_literals(OWNER))
    for key in ('"edgekd.mean"', '"edgekd.class_names"', '"edgekd.preprocess"', '"edgekd.stage"'):
        assert key in hits
    assert key_literals(PACKAGE / "runtime" / "bench.py") == []  # SCHEMA = "edgekd.bench/1" is a format name
