//! The frame both integration suites run in: the suite's shared state is set up by the first
//! trial that needs it (listing or filtering out every trial starts nothing, a failed setup
//! fails every trial with its reason), torn down after the last, and the process exits 101 when
//! a trial or the teardown failed. Trials carry the containerd release they run against as
//! their kind when it is not the default; when that release cannot run here (containerd 2.2.7's
//! archive is absent) every trial is reported ignored with the reason, never passed.

use std::sync::{Arc, OnceLock};

use anyhow::Result;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::release::Release;

/// Shared state, set up on first use.
pub struct Lazy<S>(Arc<OnceLock<std::result::Result<S, String>>>);

impl<S> Clone for Lazy<S> {
    fn clone(&self) -> Self {
        Lazy(self.0.clone())
    }
}

impl<S> Default for Lazy<S> {
    fn default() -> Self {
        Lazy(Arc::new(OnceLock::new()))
    }
}

impl<S> Lazy<S> {
    /// The state, set up by `setup` if no trial did yet.
    pub fn get(&self, setup: impl FnOnce() -> Result<S>) -> std::result::Result<&S, Failed> {
        self.0
            .get_or_init(|| setup().map_err(|e| format!("suite setup failed: {e:#}")))
            .as_ref()
            .map_err(|e| Failed::from(e.as_str()))
    }
}

/// Run `trials`, tear the state down (if it was ever set up) and exit.
pub fn conclude<S>(
    args: &Arguments,
    trials: Vec<Trial>,
    lazy: Lazy<S>,
    teardown: impl FnOnce(S) -> Result<()>,
) -> ! {
    let trials = for_release(trials);
    let conclusion = libtest_mimic::run(args, trials);
    let torn = match Arc::try_unwrap(lazy.0).map(OnceLock::into_inner) {
        Ok(Some(Ok(state))) => teardown(state),
        // Never set up, or setup failed (and cleaned up after itself).
        Ok(_) => Ok(()),
        Err(_) => Err(anyhow::anyhow!("suite still referenced at teardown")),
    };
    if let Err(e) = &torn {
        eprintln!("teardown: {e:#}");
    }
    std::process::exit(if conclusion.has_failed() || torn.is_err() {
        101
    } else {
        0
    });
}

/// `trials` as they run against the selected release: labelled with it (2.x), or all ignored
/// with the reason it cannot run here. An unknown selection is left to fail at setup.
fn for_release(trials: Vec<Trial>) -> Vec<Trial> {
    let Ok(release) = Release::selected() else {
        return trials;
    };
    if !release.is_v2() {
        return trials;
    }
    let kind = release.name().replace(' ', "-");
    match release.unavailable() {
        None => trials
            .into_iter()
            .map(|t| t.with_kind(kind.clone()))
            .collect(),
        Some(why) => trials
            .into_iter()
            .map(|t| {
                let why = why.clone();
                Trial::ignorable_test(t.name(), move || Ok(Completion::ignored_with(why)))
                    .with_kind(kind.clone())
            })
            .collect(),
    }
}
