//! The quirk database (resources/coherency.toml) and the user's overrides (config file), with
//! the file and line every value came from. Unknown fields and values are errors that name the
//! file, the line and the field; nothing is guessed past them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::facts::{Fact, MemoryType, Source};

/// The built-in database, compiled in so the binary needs no data files.
pub const BUILTIN: &str = include_str!("../../resources/coherency.toml");
/// The name the compiled-in database's sources carry.
pub const BUILTIN_NAME: &str = "resources/coherency.toml";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    exporter: BTreeMap<String, ExporterEntry>,
    #[serde(default)]
    driver: BTreeMap<String, DriverEntry>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct ExporterEntry {
    memory: Option<Spanned<MemoryType>>,
    syncs_attachments: Option<Spanned<bool>>,
    cpu_mappable: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct DriverEntry {
    render_snoops: Option<Spanned<bool>>,
    scanout_snoops: Option<Spanned<bool>>,
    imports_foreign: Option<Spanned<bool>>,
    renders: Option<Spanned<bool>>,
    implicit_linear: Option<Spanned<bool>>,
}

/// A config or quirk file that can't be used, with where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: field `{field}`: {message}")]
pub struct QuirkError {
    /// The file.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// The field (`exporter.udmabuf.memory`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Whether a layer is the shipped database or the user's override file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The quirk database.
    Database,
    /// The user's overrides.
    Override,
}

#[derive(Debug)]
struct Parsed {
    name: String,
    text: String,
    layer: Layer,
    file: File,
}

/// The database plus any overrides, queried field by field.
#[derive(Debug)]
pub struct Quirks {
    /// Lowest priority first.
    layers: Vec<Parsed>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}

/// The key on the line an error points at (`memory = "x"` → `memory`; `[driver.x]` → `driver.x`).
fn field_at(text: &str, line: usize, message: &str) -> String {
    if let Some(rest) = message.split("unknown field `").nth(1) {
        if let Some(name) = rest.split('`').next() {
            return name.to_owned();
        }
    }
    let src = text.lines().nth(line.saturating_sub(1)).unwrap_or_default().trim();
    if let Some(table) = src.strip_prefix('[') {
        return table.trim_end_matches(']').trim().to_owned();
    }
    src.split('=').next().unwrap_or_default().trim().to_owned()
}

impl Quirks {
    /// No entries at all (every fact falls back to the device tree and architecture).
    pub fn empty() -> Self {
        Quirks { layers: Vec::new() }
    }

    /// Only the built-in database.
    pub fn builtin() -> Result<Self, QuirkError> {
        let mut q = Self::empty();
        q.push(BUILTIN_NAME, BUILTIN, Layer::Database)?;
        Ok(q)
    }

    /// Adds a layer that takes precedence over everything before it.
    pub fn push(&mut self, name: &str, text: &str, layer: Layer) -> Result<(), QuirkError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            let message = e.message().trim().to_owned();
            QuirkError { file: name.to_owned(), line, field: field_at(text, line, &message), message }
        })?;
        self.layers.push(Parsed { name: name.to_owned(), text: text.to_owned(), layer, file });
        Ok(())
    }

    /// Reads `path` and adds it as a layer.
    pub fn push_file(&mut self, path: &Path, layer: Layer) -> Result<(), QuirkError> {
        let text = std::fs::read_to_string(path).map_err(|e| QuirkError {
            file: path.display().to_string(),
            line: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        self.push(&path.display().to_string(), &text, layer)
    }

    fn lookup<T: Clone>(&self, pick: impl Fn(&File) -> Option<&Spanned<T>>) -> Option<Fact<T>> {
        self.layers.iter().rev().find_map(|l| {
            let v = pick(&l.file)?;
            let at = v.span().start;
            let source = match l.layer {
                Layer::Database => Source::Quirk { file: l.name.clone(), line: line_of(&l.text, at) },
                Layer::Override => Source::Override { file: l.name.clone(), line: line_of(&l.text, at) },
            };
            Some(Fact::new(v.get_ref().clone(), source))
        })
    }

    /// The exporter's memory type, if an entry says.
    pub fn exporter_memory(&self, exporter: &str) -> Option<Fact<MemoryType>> {
        self.lookup(|f| f.exporter.get(exporter)?.memory.as_ref())
    }
    /// Whether the exporter syncs attachments, if an entry says.
    pub fn exporter_syncs_attachments(&self, exporter: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.exporter.get(exporter)?.syncs_attachments.as_ref())
    }
    /// Whether the exporter can be mmapped, if an entry says.
    pub fn exporter_cpu_mappable(&self, exporter: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.exporter.get(exporter)?.cpu_mappable.as_ref())
    }
    /// Whether the driver's GPU snoops, if an entry says.
    pub fn render_snoops(&self, driver: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.driver.get(driver)?.render_snoops.as_ref())
    }
    /// Whether the driver's display engine snoops, if an entry says.
    pub fn scanout_snoops(&self, driver: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.driver.get(driver)?.scanout_snoops.as_ref())
    }
    /// Whether the driver imports foreign dma-bufs, if an entry says.
    pub fn imports_foreign(&self, driver: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.driver.get(driver)?.imports_foreign.as_ref())
    }
    /// Whether the driver can be the renderer, if an entry says.
    pub fn renders(&self, driver: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.driver.get(driver)?.renders.as_ref())
    }
    /// Whether the driver allocates implicit-modifier buffers linearly, if an entry says.
    pub fn implicit_linear(&self, driver: &str) -> Option<Fact<bool>> {
        self.lookup(|f| f.driver.get(driver)?.implicit_linear.as_ref())
    }

    /// Every exporter named in any layer, sorted.
    pub fn exporters(&self) -> Vec<String> {
        let mut names: Vec<String> = self.layers.iter().flat_map(|l| l.file.exporter.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_database_parses_and_has_the_seed_exporters() {
        let q = Quirks::builtin().unwrap();
        assert_eq!(q.exporters(), ["drm", "system", "udmabuf", "videobuf2_dma_contig", "videobuf2_dma_sg", "videobuf2_vmalloc"]);
        let m = q.exporter_memory("udmabuf").unwrap();
        assert_eq!(m.value, MemoryType::Cached);
        assert!(matches!(m.source, Source::Quirk { ref file, line } if file == BUILTIN_NAME && line > 1));
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let mut q = Quirks::builtin().unwrap();
        let err = q.push("my.toml", "[driver.vkms]\nscanout_snoop = false\n", Layer::Override).unwrap_err();
        assert_eq!((err.file.as_str(), err.line, err.field.as_str()), ("my.toml", 2, "scanout_snoop"));
        assert!(err.to_string().starts_with("my.toml:2: field `scanout_snoop`: unknown field `scanout_snoop`"), "{err}");
    }

    #[test]
    fn unknown_value_names_file_line_and_field() {
        let mut q = Quirks::builtin().unwrap();
        let text = "# comment\n[exporter.udmabuf]\nsyncs_attachments = true\nmemory = \"cachd\"\n";
        let err = q.push("c.toml", text, Layer::Override).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (4, "memory"));
        assert!(err.message.contains("unknown variant `cachd`"), "{err}");
    }

    #[test]
    fn wrong_type_and_unknown_section_are_errors() {
        let mut q = Quirks::builtin().unwrap();
        let err = q.push("c.toml", "[driver.i915]\nrender_snoops = \"yes\"\n", Layer::Override).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "render_snoops"));
        let err = q.push("c.toml", "\n[devices.i915]\n", Layer::Override).unwrap_err();
        assert_eq!(err.field, "devices");
    }

    #[test]
    fn override_wins_and_says_so() {
        let mut q = Quirks::builtin().unwrap();
        q.push("user.toml", "\n[driver.vkms]\nscanout_snoops = false\n", Layer::Override).unwrap();
        let f = q.scanout_snoops("vkms").unwrap();
        assert!(!f.value);
        assert_eq!(f.source, Source::Override { file: "user.toml".into(), line: 3 });
        assert!(q.render_snoops("vkms").unwrap().value, "other fields keep the database value");
    }
}
