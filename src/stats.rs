//! Live statistics for `cohere inspect --live`: the running compositor writes them once a
//! second to `$XDG_RUNTIME_DIR/<socket>.cohere-stats.json` (atomically), and `inspect --live`
//! reads that file. Answers "why isn't my video zero-copy?" while it plays.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, OutputCounters};
use crate::State;

/// One snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub outputs: Vec<(String, OutputCountersView)>,
    pub buffers_planned: u64,
    pub buffers_rejected: u64,
    /// "access:path" → count over all planned buffers.
    pub decisions: Vec<(String, u64)>,
    /// Each live client buffer: exporter and its plan per consumer.
    pub live_buffers: Vec<String>,
    /// CPU copies landed and their bytes, over all surfaces.
    #[serde(default)]
    pub cpu_copies: u64,
    #[serde(default)]
    pub bytes_copied: u64,
    /// Commits that waited for their buffer's acquire fence.
    #[serde(default)]
    pub commits_held_for_fences: u64,
}

/// [`OutputCounters`] as stored in the stats file.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputCountersView {
    pub frames: u64,
    pub zero_copy_elements: u64,
    pub composited_elements: u64,
    /// Older stats files lack it.
    #[serde(default)]
    pub bytes_copied: u64,
    #[serde(default)]
    pub cursor_plane_frames: u64,
}

impl From<OutputCounters> for OutputCountersView {
    fn from(c: OutputCounters) -> Self {
        Self {
            frames: c.frames,
            zero_copy_elements: c.zero_copy_elements,
            composited_elements: c.composited_elements,
            bytes_copied: c.bytes_copied,
            cursor_plane_frames: c.cursor_plane_frames,
        }
    }
}

/// Where the stats of the compositor on `socket` live.
pub fn path_for(socket: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")?;
    Some(Path::new(&dir).join(format!("{socket}.cohere-stats.json")))
}

impl Stats {
    pub fn collect<B: Backend>(state: &State<B>) -> Self {
        let coherency = state.backend.coherency();
        Self {
            outputs: state.backend.output_counters().into_iter().map(|(n, c)| (n, c.into())).collect(),
            buffers_planned: coherency.counters.buffers,
            buffers_rejected: coherency.counters.rejected,
            decisions: coherency.counters.decisions.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            live_buffers: coherency.plans.live_plans().map(|p| format!("{}: {p}", p.exporter)).collect(),
            cpu_copies: state.core.counters.cpu_copies,
            bytes_copied: state.core.counters.bytes_copied,
            commits_held_for_fences: state.core.counters.fence_waits,
        }
    }

    /// Writes to `path` through a temporary file and a rename, so readers never see half.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }

    /// The text `inspect --live` prints.
    pub fn text(&self) -> String {
        let mut out = String::from("output            frames  zero-copy  composited  bytes-copied  cursor-plane\n");
        for (name, c) in &self.outputs {
            out += &format!(
                "{name:<16} {:>7} {:>10} {:>11} {:>13} {:>13}\n",
                c.frames, c.zero_copy_elements, c.composited_elements, c.bytes_copied, c.cursor_plane_frames
            );
        }
        out += &format!(
            "\ncpu copies {} ({} bytes), commits held for fences {}\n",
            self.cpu_copies, self.bytes_copied, self.commits_held_for_fences
        );
        out += &format!("\nbuffers planned {}, rejected {}\n", self.buffers_planned, self.buffers_rejected);
        for (k, v) in &self.decisions {
            out += &format!("  {k:<32} {v}\n");
        }
        out += "\nlive buffers:\n";
        for b in &self.live_buffers {
            out += &format!("  {b}\n");
        }
        out
    }
}
