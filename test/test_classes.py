"""classes: ids and names, and class files refused with an error that names the file."""
import pytest

from saom_ros.classes import SAOM_CLASSES, class_id, id_to_name, load_class_file


def test_ids_are_one_based_and_zero_is_unlabelled():
    assert class_id(SAOM_CLASSES, "AlarmClock") == 1
    assert id_to_name(("A", "B")) == {0: "unlabelled", 1: "A", 2: "B"}
    with pytest.raises(ValueError, match="unknown class 'Nope'"):
        class_id(SAOM_CLASSES, "Nope")


def test_class_files_in_both_forms(tmp_path):
    listed, bare = tmp_path / "listed.yaml", tmp_path / "bare.yaml"
    listed.write_text("classes: [Mug, Sofa]\n")
    bare.write_text("- Mug\n- Sofa\n")
    assert load_class_file(listed) == load_class_file(bare) == ("Mug", "Sofa")


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.yaml", "does not exist"),
    (lambda d: d, "is a directory, not a class file"),
    (lambda d: (d / "latin1.yaml").write_bytes(b"classes: [Caf\xe9]\n") and d / "latin1.yaml",
     "is not UTF-8 text"),
    (lambda d: (d / "bad.yaml").write_text("classes: [A, B\n") and d / "bad.yaml",
     "is not valid YAML"),
    (lambda d: (d / "empty.yaml").write_text("classes: []\n") and d / "empty.yaml",
     "must hold a non-empty list"),
    (lambda d: (d / "twice.yaml").write_text("[A, A]\n") and d / "twice.yaml",
     "names a class twice"),
])
def test_bad_class_files_are_value_errors_naming_the_file(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=f"class file {path} {words}"):
        load_class_file(path)


def test_an_unreadable_class_file_is_a_value_error(tmp_path, monkeypatch):
    """Any OSError (here EACCES, which root would not meet with chmod) names the file."""
    from pathlib import Path
    path = tmp_path / "classes.yaml"
    path.write_text("[A]\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ValueError, match=f"class file {path} cannot be read: Permission denied"):
        load_class_file(path)
