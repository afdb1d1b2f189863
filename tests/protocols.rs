//! cohere's own protocols (protocols/*.xml): libwayland's wayland-scanner, the C tool, accepts
//! each one in strict mode (DTD validation) for every kind of output, and each is documented in
//! wayland-protocols style.

use std::path::PathBuf;
use std::process::Command;

fn protocols() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocols");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no protocol in {}", dir.display());
    files
}

#[test]
fn wayland_scanner_validates_every_protocol() {
    let out = std::env::temp_dir().join(format!("cohere-scanner-{}", std::process::id()));
    for xml in protocols() {
        for kind in ["server-header", "client-header", "private-code"] {
            let result = Command::new("wayland-scanner")
                .args(["--strict", kind])
                .arg(&xml)
                .arg(&out)
                .output()
                .unwrap_or_else(|e| panic!("wayland-scanner (Debian: libwayland-bin) did not run: {e}"));
            assert!(
                result.status.success(),
                "wayland-scanner --strict {kind} {}: {}",
                xml.display(),
                String::from_utf8_lossy(&result.stderr)
            );
        }
    }
    let _ = std::fs::remove_file(&out);
}

/// The text of each `<tag ...>` element opening, with what follows it up to the next opening.
fn openings<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    text.match_indices(&open).map(|(i, _)| &text[i..]).collect()
}

#[test]
fn every_interface_request_event_enum_and_entry_is_documented() {
    for xml in protocols() {
        let text = std::fs::read_to_string(&xml).unwrap_or_else(|e| panic!("{}: {e}", xml.display()));
        let name = xml.display();
        for tag in ["interface", "request", "event", "enum"] {
            for element in openings(&text, tag) {
                let head = element.lines().next().unwrap_or_default();
                // The element's first child is its description, with a summary and a body.
                let after = &element[element.find('>').map_or(0, |i| i + 1)..];
                let child = after.trim_start();
                assert!(child.starts_with("<description summary=\""), "{name}: {head} has no description with a summary");
                let body = child.split("</description>").next().unwrap_or_default();
                let body = body.split_once('>').map_or("", |(_, b)| b).trim();
                assert!(!body.is_empty(), "{name}: {head}: the description is empty");
            }
        }
        for tag in ["entry", "arg"] {
            for element in openings(&text, tag) {
                let element = element.split("/>").next().unwrap_or_default();
                assert!(element.contains("summary=\""), "{name}: {element} has no summary");
            }
        }
        assert!(text.contains("Backward incompatible changes"), "{name}: no versioning note");
    }
}
