//! The client's side of cohere-buffer-path-v1: feed a `cohere_surface_buffer_path_v1`'s events
//! to a [`BatchReader`] and get each batch, typed, when its `done` arrives. Its `Display` is
//! the readable transcript that `examples/buffer-path.rs` prints and the tests compare.
//!
//! ```no_run
//! use cohere::buffer_path::observe::BatchReader;
//! use cohere::buffer_path::protocol::client::cohere_surface_buffer_path_v1::Event;
//! # fn events() -> Vec<Event> { Vec::new() }
//! let mut reader = BatchReader::default();
//! for event in events() {
//!     if let Some(batch) = reader.event(event) {
//!         print!("{batch}");
//!     }
//! }
//! ```

use std::fmt;

use wayland_client::WEnum;

use super::protocol::client::cohere_surface_buffer_path_v1::{Consumer, Event, Hint, Outcome, Path, Reason};

/// One consumer event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerEvent {
    /// Who reads the buffer.
    pub consumer: WEnum<Consumer>,
    /// The display's device (dev_t), for a display.
    pub device: Option<u64>,
    /// How it gets the pixels.
    pub path: WEnum<Path>,
    /// Why.
    pub reason: WEnum<Reason>,
    /// The reason in words.
    pub detail: String,
}

/// The presented event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedEvent {
    /// How the surface was shown.
    pub outcome: WEnum<Outcome>,
    /// Why not zero-copy, or `coherent`.
    pub reason: WEnum<Reason>,
    /// What the newest CPU copy read.
    pub bytes_copied: u64,
}

/// One hint event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintEvent {
    /// The change.
    pub hint: WEnum<Hint>,
    /// The display it is about (dev_t), if any.
    pub device: Option<u64>,
    /// The hint in words.
    pub detail: String,
}

/// A batch: everything between two `done` events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// One per consumer.
    pub consumers: Vec<ConsumerEvent>,
    /// What the last presented frame did, once there is one.
    pub presented: Option<PresentedEvent>,
    /// What the client could change.
    pub hints: Vec<HintEvent>,
}

impl Batch {
    /// The event for the renderer, if any.
    pub fn render(&self) -> Option<&ConsumerEvent> {
        self.consumers.iter().find(|c| c.consumer == WEnum::Value(Consumer::Render))
    }

    /// The event for the display with device `dev`, if any.
    pub fn display(&self, dev: u64) -> Option<&ConsumerEvent> {
        self.consumers.iter().find(|c| c.consumer == WEnum::Value(Consumer::Display) && c.device == Some(dev))
    }

    /// Whether a hint of this kind is in the batch.
    pub fn has_hint(&self, hint: Hint) -> bool {
        self.hints.iter().any(|h| h.hint == WEnum::Value(hint))
    }
}

/// Gathers events into batches.
#[derive(Debug, Default)]
pub struct BatchReader {
    pending: Batch,
}

impl BatchReader {
    /// Takes one event; returns the batch it completes, on `done`.
    pub fn event(&mut self, event: Event) -> Option<Batch> {
        match event {
            Event::Consumer { consumer, device, path, reason, detail } => {
                self.pending.consumers.push(ConsumerEvent { consumer, device: dev_t(&device), path, reason, detail });
            }
            Event::Presented { outcome, reason, bytes_copied_hi, bytes_copied_lo } => {
                let bytes_copied = (u64::from(bytes_copied_hi) << 32) | u64::from(bytes_copied_lo);
                self.pending.presented = Some(PresentedEvent { outcome, reason, bytes_copied });
            }
            Event::Hint { hint, device, detail } => self.pending.hints.push(HintEvent { hint, device: dev_t(&device), detail }),
            Event::Done => return Some(std::mem::take(&mut self.pending)),
        }
        None
    }
}

/// A dev_t from the protocol's array (native byte order; empty for none).
fn dev_t(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_ne_bytes)
}

/// `major:minor` of a dev_t.
pub fn device_name(dev: u64) -> String {
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// An enum value as the protocol spells it (`direct_with_maintenance`), or `unknown(N)`.
pub fn wire_name<T: fmt::Debug>(value: &WEnum<T>) -> String {
    match value {
        WEnum::Value(v) => {
            let camel = format!("{v:?}");
            let mut snake = String::new();
            for (i, ch) in camel.chars().enumerate() {
                if ch.is_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.extend(ch.to_lowercase());
            }
            snake
        }
        WEnum::Unknown(n) => format!("unknown({n})"),
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.consumers {
            let who = match c.device {
                Some(dev) => format!("{} {}", wire_name(&c.consumer), device_name(dev)),
                None => wire_name(&c.consumer),
            };
            writeln!(f, "consumer {who}: {} ({}): {}", wire_name(&c.path), wire_name(&c.reason), c.detail)?;
        }
        if let Some(p) = &self.presented {
            writeln!(f, "presented: {} ({}), {} bytes copied", wire_name(&p.outcome), wire_name(&p.reason), p.bytes_copied)?;
        }
        for h in &self.hints {
            let device = h.device.map(|d| format!(" {}", device_name(d))).unwrap_or_default();
            writeln!(f, "hint {}{device}: {}", wire_name(&h.hint), h.detail)?;
        }
        writeln!(f, "done")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_protocols() {
        assert_eq!(wire_name(&WEnum::Value(Path::DirectWithMaintenance)), "direct_with_maintenance");
        assert_eq!(wire_name(&WEnum::Value(Reason::NotDmaBuf)), "not_dma_buf");
        assert_eq!(wire_name::<Path>(&WEnum::Unknown(9)), "unknown(9)");
        assert_eq!(device_name(rustix::fs::makedev(226, 1)), "226:1");
    }

    #[test]
    fn a_batch_ends_at_done() {
        let mut reader = BatchReader::default();
        let consumer = Event::Consumer {
            consumer: WEnum::Value(Consumer::Display),
            device: rustix::fs::makedev(226, 1).to_ne_bytes().to_vec(),
            path: WEnum::Value(Path::Direct),
            reason: WEnum::Value(Reason::Coherent),
            detail: "why".into(),
        };
        assert!(reader.event(consumer).is_none());
        let presented = Event::Presented {
            outcome: WEnum::Value(Outcome::Copied),
            reason: WEnum::Value(Reason::CannotImport),
            bytes_copied_hi: 1,
            bytes_copied_lo: 2,
        };
        assert!(reader.event(presented).is_none());
        let batch = reader.event(Event::Done).expect("a batch at done");
        assert_eq!(batch.presented.map(|p| p.bytes_copied), Some((1 << 32) | 2));
        assert_eq!(
            batch.to_string(),
            "consumer display 226:1: direct (coherent): why\npresented: copied (cannot_import), 4294967298 bytes copied\ndone\n"
        );
        assert!(reader.event(Event::Done).is_some_and(|b| b == Batch::default()), "the next batch starts empty");
    }
}
