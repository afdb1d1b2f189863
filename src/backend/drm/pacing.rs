//! When each KMS output draws. Exactly one thing drives an output at a time, so it draws (and
//! answers frame callbacks) at most once per refresh:
//! - a queued frame: its page flip's vblank draws the next one;
//! - or, when a frame had nothing new, a refresh tick one period later.
//!
//! A commit to an output waiting on its tick draws at once (from an idle callback, after the
//! dispatch that brought it), so a client that commits right after a vblank is on screen at the
//! next one instead of one refresh later. If that draw finds nothing new, the tick stays, so
//! frame callbacks still come once per refresh.

use std::collections::HashMap;

use smithay::output::Output;
use smithay::reexports::calloop::{LoopHandle, RegistrationToken};

use crate::State;

use super::Drm;

/// What drives an output now.
#[derive(Debug)]
enum Pace {
    /// A frame is queued; its flip draws the next.
    Flip,
    /// Nothing new was drawn; this timer draws again in one refresh.
    Tick(RegistrationToken),
}

/// The outputs' pacing.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    outputs: HashMap<Output, Pace>,
    /// An idle callback will try the outputs waiting on ticks.
    redraw_queued: bool,
}

/// Why a frame is being rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A page flip just completed; that refresh is already accounted for.
    Vblank,
    /// Start-up, a new device, session resume, or an idle refresh tick.
    Tick,
    /// A commit (or a plan change) while the output waited on its tick.
    Commit,
}

impl Pacing {
    /// Whether a render for `trigger` may go ahead: a vblank or tick only if nothing else drives
    /// the output, a commit only while the output waits on its tick.
    pub(crate) fn may_render(&self, output: &Output, trigger: Trigger) -> bool {
        match (trigger, self.outputs.get(output)) {
            // Nothing at all drives it (its render failed, or its tick couldn't be set).
            (Trigger::Commit, None) => true,
            (Trigger::Commit, Some(pace)) => matches!(pace, Pace::Tick(_)),
            (_, pace) => pace.is_none(),
        }
    }

    /// A frame was queued on `output`: its flip drives it now (a pending tick is dropped).
    pub(crate) fn queued(&mut self, output: &Output, handle: &LoopHandle<'static, State<Drm>>) {
        if let Some(Pace::Tick(token)) = self.outputs.insert(output.clone(), Pace::Flip) {
            handle.remove(token);
        }
    }

    /// A tick timer drives `output` now.
    pub(crate) fn ticking(&mut self, output: &Output, token: RegistrationToken) {
        self.outputs.insert(output.clone(), Pace::Tick(token));
    }

    /// The flip of `output`'s queued frame completed, or its tick fired: nothing drives it until
    /// the render that follows. `false` if the output wasn't driven that way (a stale tick
    /// after [`Pacing::reset`]).
    pub(crate) fn done(&mut self, output: &Output, trigger: Trigger) -> bool {
        let expected = match (trigger, self.outputs.get(output)) {
            (Trigger::Vblank, Some(Pace::Flip)) | (Trigger::Tick, Some(Pace::Tick(_))) => true,
            // A flip of a frame queued before a reset still completes; draw after it.
            (Trigger::Vblank, None) => true,
            _ => false,
        };
        if expected {
            self.outputs.remove(output);
        }
        expected
    }

    /// Nothing drives `output` (its render failed, or it is gone).
    pub(crate) fn forget(&mut self, output: &Output, handle: &LoopHandle<'static, State<Drm>>) {
        if let Some(Pace::Tick(token)) = self.outputs.remove(output) {
            handle.remove(token);
        }
    }

    /// Forgets queued frames and pending ticks (session resumed, device gone): the next render
    /// starts fresh.
    pub(crate) fn reset(&mut self, handle: &LoopHandle<'static, State<Drm>>) {
        for (_, pace) in self.outputs.drain() {
            if let Pace::Tick(token) = pace {
                handle.remove(token);
            }
        }
    }

    /// Something changed: outputs waiting on their tick try to draw once the current dispatch is
    /// done (so one idle callback serves all the commits it brought).
    pub(crate) fn redraw_soon(&mut self, handle: &LoopHandle<'static, State<Drm>>) {
        if self.redraw_queued || !self.outputs.values().any(|p| matches!(p, Pace::Tick(_))) {
            return;
        }
        self.redraw_queued = true;
        handle.insert_idle(|state| {
            state.backend.pacing.redraw_queued = false;
            let waiting: Vec<Output> =
                state.backend.pacing.outputs.iter().filter(|(_, p)| matches!(p, Pace::Tick(_))).map(|(o, _)| o.clone()).collect();
            for output in waiting {
                super::render_output(state, &output, Trigger::Commit);
            }
        });
    }
}
