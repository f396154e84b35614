//! Tests of the resource selection: listing a directory, names, `all`,
//! nothing named, `--config FILE`, and the errors that list what exists.

use std::fs;
use std::path::Path;

use super::*;

/// A valid resource file for `name`.
fn text(name: &str) -> String {
    format!(
        "[resource]\nname = \"{name}\"\n[net]\nsecret = \"s\"\n\
         [[node]]\nname = \"alpha\"\naddress = \"127.0.0.1:7788\"\ndisk = \"/tmp/a.img\"\n\
         [[node]]\nname = \"beta\"\naddress = \"127.0.0.1:7789\"\ndisk = \"/tmp/b.img\"\n"
    )
}

/// A directory with one file per name (each configuring its own name).
fn dir_with(names: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for n in names {
        fs::write(d.path().join(format!("{n}.toml")), text(n)).unwrap();
    }
    d
}

fn names(r: &[ResourceFile]) -> Vec<&str> {
    r.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn list_sorts_by_name_and_skips_what_is_not_a_resource_file() {
    let d = dir_with(&["r1", "r0", "web.data"]);
    fs::write(d.path().join("notes.txt"), "x").unwrap();
    fs::write(d.path().join(".hidden.toml"), "x").unwrap();
    fs::write(d.path().join("r0.toml~"), "x").unwrap();
    fs::create_dir(d.path().join("sub.toml")).unwrap();
    let l = list(d.path()).unwrap();
    assert_eq!(names(&l), ["r0", "r1", "web.data"]);
    assert_eq!(l[0].path, d.path().join("r0.toml"));
    assert_eq!(l[2].load().unwrap().resource.name, "web.data");
}

#[test]
fn an_empty_or_missing_directory_says_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let e = list(d.path()).unwrap_err().to_string();
    assert!(e.contains("no resource files (*.toml)"), "{e}");
    assert!(e.contains("--config FILE"), "{e}");
    let e = list(&d.path().join("nope")).unwrap_err().to_string();
    assert!(e.contains("cannot read the configuration directory"), "{e}");
    assert!(e.contains("--config-dir DIR"), "{e}");
}

#[test]
fn a_file_called_all_is_refused() {
    let d = dir_with(&["r0", "all"]);
    let e = list(d.path()).unwrap_err().to_string();
    assert!(e.contains("all.toml"), "{e}");
    assert!(e.contains("means every resource"), "{e}");
}

#[test]
fn a_name_selects_its_file_only() {
    let d = dir_with(&["r0", "r1"]);
    for unnamed in [Unnamed::All, Unnamed::OnlyOne] {
        let s = select(d.path(), Some("r1"), unnamed).unwrap();
        assert_eq!(names(&s), ["r1"]);
        assert_eq!(s[0].path, d.path().join("r1.toml"));
    }
}

#[test]
fn an_unknown_name_lists_the_resources_there_are() {
    let d = dir_with(&["r0", "r1"]);
    let e = select(d.path(), Some("r7"), Unnamed::OnlyOne)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no resource `r7`"), "{e}");
    assert!(e.contains("r0, r1"), "{e}");
    // Not a path: a name with a slash is looked up, not opened.
    let e = select(d.path(), Some("../r0"), Unnamed::OnlyOne).unwrap_err();
    assert!(matches!(e, ResourcesError::Unknown { .. }), "{e}");
}

#[test]
fn all_and_nothing_named() {
    let d = dir_with(&["r1", "r0"]);
    for unnamed in [Unnamed::All, Unnamed::OnlyOne] {
        assert_eq!(
            names(&select(d.path(), Some(ALL), unnamed).unwrap()),
            ["r0", "r1"]
        );
    }
    assert_eq!(
        names(&select(d.path(), None, Unnamed::All).unwrap()),
        ["r0", "r1"]
    );
    let e = select(d.path(), None, Unnamed::OnlyOne)
        .unwrap_err()
        .to_string();
    assert!(e.contains("several resources (r0, r1)"), "{e}");
    assert!(
        e.contains("name the one to act on after the command (e.g. `r0`)"),
        "{e}"
    );
    assert!(e.contains("`all`"), "{e}");
    // One resource: nothing named means that one, for every verb.
    let one = dir_with(&["r0"]);
    assert_eq!(
        names(&select(one.path(), None, Unnamed::OnlyOne).unwrap()),
        ["r0"]
    );
}

#[test]
fn a_file_named_for_another_resource_is_refused_naming_both() {
    let d = dir_with(&["r0"]);
    fs::write(d.path().join("r1.toml"), text("r0")).unwrap();
    let s = select(d.path(), Some("r1"), Unnamed::OnlyOne).unwrap();
    let e = s[0].load().unwrap_err().to_string();
    assert!(e.contains("r1.toml"), "{e}");
    assert!(e.contains("named for resource `r1`"), "{e}");
    assert!(e.contains("[resource] name is `r0`"), "{e}");
}

#[test]
fn an_invalid_file_gives_the_config_error() {
    let d = dir_with(&["r0"]);
    fs::write(d.path().join("r0.toml"), "[resource]\nname = \"r0\"\n").unwrap();
    let e = ResourceFile::in_dir(d.path(), "r0").load().unwrap_err();
    assert!(matches!(e, ResourcesError::Config(_)), "{e}");
}

#[test]
fn config_file_takes_its_name_from_the_file() {
    let d = dir_with(&["r0"]);
    let p = d.path().join("r0.toml");
    // Any file name will do with --config, as before.
    let other = d.path().join("mine.conf");
    fs::copy(&p, &other).unwrap();
    for wanted in [None, Some("r0"), Some(ALL)] {
        let r = from_config_file(&other, wanted).unwrap();
        assert_eq!((r.name.as_str(), r.path.as_path()), ("r0", other.as_path()));
        r.load().unwrap();
    }
    let e = from_config_file(&other, Some("r1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("resource `r1` was named"), "{e}");
    assert!(e.contains("configures resource `r0`"), "{e}");
    let e = from_config_file(Path::new("/nonexistent/r0.toml"), None).unwrap_err();
    assert!(
        matches!(e, ResourcesError::Config(ConfigError::Read { .. })),
        "{e}"
    );
}

#[test]
fn resolve_prefers_the_config_file() {
    let d = dir_with(&["r0", "r1"]);
    let p = d.path().join("r1.toml");
    let r = resolve(Some(&p), Path::new("/nonexistent"), None, Unnamed::OnlyOne).unwrap();
    assert_eq!(names(&r), ["r1"]);
    let r = resolve(None, d.path(), None, Unnamed::All).unwrap();
    assert_eq!(names(&r), ["r0", "r1"]);
    assert_eq!(ResourceFile::in_dir(d.path(), "r1"), r[1]);
}

#[test]
fn too_many_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..=MAX_RESOURCES {
        fs::write(d.path().join(format!("r{i}.toml")), "").unwrap();
    }
    let e = list(d.path()).unwrap_err().to_string();
    assert!(e.contains("more than 1024"), "{e}");
}
