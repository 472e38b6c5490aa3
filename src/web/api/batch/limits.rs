//! Bounds on one `/batch/` request (`[batch]` settings, docs/security.md §3): steps per job,
//! nesting depth, token expansions, the size of each resolved step and a wall-clock limit.
//! The outermost job creates a [`Scope`]; every job nested in it shares the scope's
//! expansion count, deadline and abort slot, one level deeper.

use super::tokens::Meter;
use crate::config::Config;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The configured bounds, in the units the batch code counts in.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_steps: usize,
    pub max_depth: usize,
    pub max_expansions: usize,
    /// `server.max_body_size`: the largest resolved step (path and body).
    pub max_body: usize,
    pub time_limit: Duration,
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Limits {
    pub fn of(config: &Config) -> Limits {
        let s = &config.settings;
        Limits {
            max_steps: size(s.batch.max_steps),
            max_depth: size(s.batch.max_depth),
            max_expansions: size(s.batch.max_expansions),
            max_body: size(s.server.max_body_size),
            time_limit: Duration::from_secs(s.batch.time_limit),
        }
    }
}

/// What the jobs of one request share.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    deadline: Instant,
    expansions: AtomicUsize,
    /// The 400 body of the first limit a nested job reached: every enclosing job stops
    /// with it, so the client sees which limit, not a failed `/batch/` step.
    abort: Mutex<Option<Value>>,
}

/// Where a job runs: the request's shared bounds and the job's depth (0 = outermost).
#[derive(Debug, Clone)]
pub struct Scope {
    shared: Arc<Shared>,
    pub depth: usize,
}

impl Scope {
    /// The scope of an outermost job; its clock starts now.
    pub fn outermost(limits: Limits) -> Scope {
        let deadline = Instant::now() + limits.time_limit;
        Scope {
            shared: Arc::new(Shared {
                limits,
                deadline,
                expansions: AtomicUsize::new(0),
                abort: Mutex::new(None),
            }),
            depth: 0,
        }
    }

    /// The scope of a job nested in a step of this one.
    pub fn nested(&self) -> Scope {
        Scope {
            shared: self.shared.clone(),
            depth: self.depth + 1,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Whether this job is nested deeper than `batch.max_depth` allows.
    pub fn too_deep(&self) -> bool {
        self.depth > self.shared.limits.max_depth
    }

    /// What the next step may spend on resolving its tokens.
    pub fn meter(&self) -> Meter {
        let used = self.shared.expansions.load(Ordering::Relaxed);
        Meter {
            expansions: self.shared.limits.max_expansions.saturating_sub(used),
            bytes: self.shared.limits.max_body,
        }
    }

    /// Books the expansions a step used (`before` is the meter it started with).
    pub fn spent(&self, before: &Meter, after: &Meter) {
        let used = before.expansions.saturating_sub(after.expansions);
        self.shared.expansions.fetch_add(used, Ordering::Relaxed);
    }

    /// Time left before the deadline; None once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.shared
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Records the first limit reached in this request.
    pub fn abort(&self, body: Value) {
        if let Ok(mut slot) = self.shared.abort.lock()
            && slot.is_none()
        {
            *slot = Some(body);
        }
    }

    /// The limit a nested job reached, if any.
    pub fn aborted(&self) -> Option<Value> {
        self.shared.abort.lock().ok().and_then(|slot| slot.clone())
    }
}

/// 400: a job nested deeper than `batch.max_depth`.
pub fn too_deep(max_depth: usize) -> Value {
    let detail = match max_depth {
        0 => "Batch jobs may not contain nested batch jobs.".to_string(),
        1 => "Ensure batch jobs are nested no more than 1 level deep.".to_string(),
        n => format!("Ensure batch jobs are nested no more than {n} levels deep."),
    };
    json!({ "detail": detail })
}

/// 400: the request has resolved `batch.max_expansions` tokens; `token` is one too many.
pub fn too_many_expansions(token: &str, max: usize) -> Value {
    json!({
        "detail": format!(
            "Cannot resolve reference \"{token}\": Ensure this job resolves no more than {max} references."
        ),
        "token": token,
    })
}

/// 400: a step whose resolved path and body exceed `server.max_body_size`.
pub fn too_large(index: usize, method: &str, path: &str, max: usize) -> Value {
    json!({
        "detail": format!(
            "Step #{index} ({method} {path}) is too large once its references are resolved: the limit is {max} bytes."
        ),
        "step": index,
    })
}

/// 422: the job ran past `batch.time_limit`; in the shape of a failed step (§12.3 step 7),
/// with the status the last step answered and no body (its results were discarded).
pub fn timed_out(index: usize, method: &str, path: &str, status: u16, limit: Duration) -> Value {
    let secs = limit.as_secs();
    let unit = if secs == 1 { "second" } else { "seconds" };
    json!({
        "detail": format!(
            "Job exceeded its time limit of {secs} {unit} at step #{index} ({method} {path}); no changes were saved."
        ),
        "step": index,
        "status": status,
        "body": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_steps: 3,
            max_depth: 1,
            max_expansions: 5,
            max_body: 100,
            time_limit: Duration::from_secs(30),
        }
    }

    #[test]
    fn nested_scopes_share_expansions_deadline_and_abort() {
        let outer = Scope::outermost(limits());
        let inner = outer.nested();
        assert!(!inner.too_deep());
        assert!(inner.nested().too_deep());
        let before = inner.meter();
        assert_eq!(before.expansions, 5);
        let after = Meter {
            expansions: 2,
            bytes: 0,
        };
        inner.spent(&before, &after);
        assert_eq!(outer.meter().expansions, 2);
        assert_eq!(outer.meter().bytes, 100, "size is per step");
        assert!(outer.remaining().is_some());
        inner.abort(json!({"detail": "first"}));
        inner.abort(json!({"detail": "second"}));
        assert_eq!(outer.aborted(), Some(json!({"detail": "first"})));
    }

    #[test]
    fn a_passed_deadline_leaves_no_time() {
        let scope = Scope::outermost(Limits {
            time_limit: Duration::ZERO,
            ..limits()
        });
        assert_eq!(scope.remaining(), None);
    }

    #[test]
    fn messages() {
        assert_eq!(
            too_deep(1)["detail"],
            "Ensure batch jobs are nested no more than 1 level deep."
        );
        assert_eq!(
            too_deep(0)["detail"],
            "Batch jobs may not contain nested batch jobs."
        );
        assert_eq!(
            too_many_expansions("@ref{t.id}", 5),
            json!({
                "detail": "Cannot resolve reference \"@ref{t.id}\": Ensure this job resolves no more than 5 references.",
                "token": "@ref{t.id}"
            })
        );
        assert_eq!(
            timed_out(4, "GET", "/users/teams/", 200, Duration::from_secs(1))["detail"],
            "Job exceeded its time limit of 1 second at step #4 (GET /users/teams/); no changes were saved."
        );
    }
}
