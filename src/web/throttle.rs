//! API throttling (spec/operations.md §1.2.6, domain.md §1.6): DRF's SimpleRateThrottle sliding
//! window per (scope, key), counted in Redis when configured (one budget shared by all web
//! processes) or else in this process's memory. The HTTP middleware picks scopes and keys
//! (the client address of `crate::web::client`, ⚑ not upstream's whole `X-Forwarded-For`),
//! calls [`Throttle::check`] and renders a refusal with [`wait_message`]. Budgets that count
//! only some outcomes (failed logins per username) reserve an entry first and
//! [`Throttle::release`] it when the outcome does not count.
//!
//! With Redis, [`Throttle::check`] keeps the round trip off the request's path for busy
//! keys: each process remembers what Redis last said of a key (its count, and until when it
//! is refused) and accepts locally while that count plus its own not yet recorded hits stays
//! under the rate; a background task records those hits in Redis every [`FLUSH_INTERVAL`]
//! and refreshes the count. A key not refreshed within [`FRESH`], or one whose local count
//! reaches the rate, is decided by Redis itself, exactly as before. Refusals keep DRF's
//! `Retry-After` (the time until the oldest counted hit leaves the window). What this costs
//! is bounded overshoot with several web processes: each other process may accept what it
//! still saw as free in a report at most [`FRESH`] old, so N processes accept at most
//! `rate + (N - 1) * (hits one process accepts within FRESH)` per window, and never more
//! than `N * rate` (docs/deployment.md).

use crate::config::Rate;
use fred::clients::WithOptions;
use fred::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refused request: whole seconds until the budget allows another one (the `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub seconds: u64,
}

impl Wait {
    /// Rounded up like DRF's `math.ceil(wait)`, and never 0.
    fn from_duration(remaining: Duration) -> Wait {
        let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        Wait {
            seconds: seconds.max(1),
        }
    }

    fn from_millis(remaining_ms: u64) -> Wait {
        Wait::from_duration(Duration::from_millis(remaining_ms))
    }
}

/// The refusal's `detail`, worded as upstream.
pub fn wait_message(seconds: u64) -> String {
    let unit = if seconds == 1 { "second" } else { "seconds" };
    format!("Request was throttled. Expected available in {seconds} {unit}.")
}

/// One throttle backend per process, shared by all requests.
pub enum Throttle {
    Memory(MemoryThrottle),
    Redis(RedisThrottle),
}

/// Redis when a URL is given and reachable; otherwise (logged) this process's memory.
pub async fn connect(redis_url: Option<String>) -> Throttle {
    let Some(url) = redis_url else {
        return Throttle::memory();
    };
    match RedisThrottle::connect(&url).await {
        Ok(redis) => Throttle::Redis(redis),
        Err(err) => {
            tracing::warn!(
                "throttle: cannot connect to Redis ({err}); counting requests in this process's memory, not shared with other web processes"
            );
            Throttle::memory()
        }
    }
}

impl Throttle {
    pub fn memory() -> Throttle {
        Throttle::Memory(MemoryThrottle::new())
    }

    /// Counts in Redis through an existing client (connected by the caller, e.g. one shared
    /// with other Redis users in the process).
    pub fn redis(client: Client) -> Throttle {
        Throttle::Redis(RedisThrottle::new(client))
    }

    /// `"memory"` or `"redis"`, for logs and health output.
    pub fn backend(&self) -> &'static str {
        match self {
            Throttle::Memory(_) => "memory",
            Throttle::Redis(_) => "redis",
        }
    }

    /// Accepts and records a request for `key` in `scope`, or refuses it (unrecorded) when
    /// `rate.count` requests were accepted within the last `rate.period_secs`. Redis failures
    /// allow the request.
    pub async fn check(&self, scope: &str, key: &str, rate: Rate) -> Result<(), Wait> {
        match self {
            Throttle::Redis(redis) => redis.check(scope, key, rate).await,
            Throttle::Memory(_) => self.reserve(scope, key, rate).await.map(|_| ()),
        }
    }

    /// [`Throttle::check`], returning the recorded entry so that it can be taken back.
    pub async fn reserve(&self, scope: &str, key: &str, rate: Rate) -> Result<Reservation, Wait> {
        let entry = match self {
            Throttle::Memory(memory) => {
                let now = Instant::now();
                memory.check_at(scope, key, rate, now)?;
                Entry::Memory(now)
            }
            Throttle::Redis(redis) => {
                let member = uuid::Uuid::new_v4().simple().to_string();
                if redis.check_exact(scope, key, rate, &member).await? {
                    Entry::Redis(member)
                } else {
                    Entry::Unrecorded
                }
            }
        };
        Ok(Reservation {
            scope: scope.to_owned(),
            key: key.to_owned(),
            entry,
        })
    }

    /// Takes back a reserved entry: it no longer counts against the budget.
    pub async fn release(&self, reservation: Reservation) {
        let Reservation { scope, key, entry } = reservation;
        match (self, entry) {
            (Throttle::Memory(memory), Entry::Memory(at)) => memory.release_at(&scope, &key, at),
            (Throttle::Redis(redis), Entry::Redis(member)) => {
                redis.remove(&scope, &key, &member).await;
            }
            _ => {}
        }
    }
}

/// An accepted, recorded request that [`Throttle::release`] can take back.
#[derive(Debug)]
pub struct Reservation {
    scope: String,
    key: String,
    entry: Entry,
}

#[derive(Debug)]
enum Entry {
    Memory(Instant),
    /// The sorted-set member recorded in Redis.
    Redis(String),
    /// Redis did not answer and the request was let through unrecorded.
    Unrecorded,
}

/// Every so often, drop histories whose requests have all left their window.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Never sweep more often than this many new keys (amortises sweeping under many keys).
const MIN_SWEEP_LEN: usize = 1024;
/// Keys kept after a sweep at most; beyond it the least recently used are dropped (as Django's
/// local-memory cache culls), so spoofed identities cannot exhaust memory.
const MAX_KEYS: usize = 100_000;

/// Per-process counters: the accepted requests' instants per (scope, key), oldest first.
pub struct MemoryThrottle {
    state: Mutex<MemoryState>,
}

struct MemoryState {
    histories: HashMap<(String, String), History>,
    next_sweep_at: Option<Instant>,
    sweep_above_len: usize,
    max_keys: usize,
}

struct History {
    hits: VecDeque<Instant>,
    /// The period last checked against, so a sweep knows when the history has expired.
    period: Duration,
}

impl History {
    /// DRF drops entries with `timestamp <= now - duration`.
    fn prune(&mut self, now: Instant) {
        while let Some(&oldest) = self.hits.front() {
            if now.saturating_duration_since(oldest) >= self.period {
                self.hits.pop_front();
            } else {
                break;
            }
        }
    }
}

impl Default for MemoryThrottle {
    fn default() -> Self {
        MemoryThrottle::new()
    }
}

impl MemoryThrottle {
    pub fn new() -> MemoryThrottle {
        MemoryThrottle::with_max_keys(MAX_KEYS)
    }

    fn with_max_keys(max_keys: usize) -> MemoryThrottle {
        MemoryThrottle {
            state: Mutex::new(MemoryState {
                histories: HashMap::new(),
                next_sweep_at: None,
                sweep_above_len: MIN_SWEEP_LEN,
                max_keys,
            }),
        }
    }

    /// [`Throttle::check`] at a given instant (the clock is a parameter so tests need no sleeps).
    pub fn check_at(&self, scope: &str, key: &str, rate: Rate, now: Instant) -> Result<(), Wait> {
        let period = Duration::from_secs(rate.period_secs);
        // A panic elsewhere while holding the lock leaves the counters usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.maybe_sweep(now);
        let history = state
            .histories
            .entry((scope.to_owned(), key.to_owned()))
            .or_insert_with(|| History {
                hits: VecDeque::new(),
                period,
            });
        history.period = period;
        history.prune(now);
        let len = history.hits.len() as u64;
        if len >= rate.count {
            // Available again when enough of the oldest hits have left for the count to drop
            // below the limit (the oldest one when exactly at the limit, as DRF computes).
            let remaining = match usize::try_from(len - rate.count) {
                Ok(index) if rate.count > 0 => {
                    period.saturating_sub(now.saturating_duration_since(history.hits[index]))
                }
                _ => period,
            };
            return Err(Wait::from_duration(remaining));
        }
        history.hits.push_back(now);
        Ok(())
    }

    /// Removes one hit recorded at `at` (the newest such; equal instants are interchangeable).
    fn release_at(&self, scope: &str, key: &str, at: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(history) = state.histories.get_mut(&(scope.to_owned(), key.to_owned()))
            && let Some(index) = history.hits.iter().rposition(|hit| *hit == at)
        {
            history.hits.remove(index);
        }
    }
}

impl MemoryState {
    fn maybe_sweep(&mut self, now: Instant) {
        let due = self.next_sweep_at.is_none_or(|at| now >= at);
        if !due && self.histories.len() < self.sweep_above_len {
            return;
        }
        self.histories.retain(|_, history| {
            history.prune(now);
            !history.hits.is_empty()
        });
        if self.histories.len() > self.max_keys {
            let mut newest: Vec<(Instant, (String, String))> = self
                .histories
                .iter()
                .filter_map(|(k, h)| h.hits.back().map(|at| (*at, k.clone())))
                .collect();
            newest.sort_unstable_by_key(|(at, _)| *at);
            let excess = self.histories.len() - self.max_keys * 2 / 3;
            for (_, k) in newest.into_iter().take(excess) {
                self.histories.remove(&k);
            }
        }
        self.next_sweep_at = Some(now + SWEEP_INTERVAL);
        self.sweep_above_len = (self.histories.len() * 2).max(MIN_SWEEP_LEN);
    }
}

const KEY_PREFIX: &str = "keystone:throttle:";
/// A Redis call slower than this allows the request rather than holding it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one "Redis unavailable" warning per interval; the others are counted.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// One atomic exchange about a key, on one sorted set per (scope, key) scored by the Redis
/// server's clock in milliseconds so the web hosts' clocks do not matter: records the `hits`
/// a process accepted locally (members `<member>:<i>`), then, with `check` = 1, accepts one
/// more request (recorded as `<member>`) unless `count` requests are in the window.
/// KEYS[1]: the set; ARGV: count, period in ms, hits, check (0 or 1), a unique member.
/// Returns {accepted (0 or 1), count now in the window, ms until the count drops below the
/// limit when refused (else 0)}.
const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local count = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])
local check = ARGV[4] == '1'
local member = ARGV[5]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
for i = 1, hits do
  redis.call('ZADD', key, now, member .. ':' .. i)
end
local n = redis.call('ZCARD', key)
local accepted = 0
local wait = 0
if check then
  if n < count then
    redis.call('ZADD', key, now, member)
    n = n + 1
    accepted = 1
  elseif count <= 0 then
    wait = period
  else
    local entry = redis.call('ZRANGE', key, n - count, n - count, 'WITHSCORES')
    wait = math.max(tonumber(entry[2]) + period - now, 1)
  end
end
if hits > 0 or accepted == 1 then
  redis.call('PEXPIRE', key, period)
end
return {accepted, n, wait}
"#;

/// How often the hits accepted locally are recorded in Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How long what Redis said of a key is used to accept requests locally.
/// A busy key is refreshed by every flush; one idle longer than this is asked of Redis again.
pub const FRESH: Duration = Duration::from_millis(100);

/// What a process knows of one key between exchanges with Redis.
#[derive(Debug, Clone)]
struct View {
    rate: Rate,
    /// Hits in the window when Redis last reported, this process's recorded ones included.
    counted: u64,
    counted_at: Instant,
    /// Accepted here since, not yet recorded in Redis.
    pending: u64,
    /// Refused until then, as Redis computed.
    refused_until: Option<Instant>,
}

/// What the local view decides for one request.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Accept,
    Refuse(Wait),
    /// Unknown, stale or at the limit: Redis decides.
    AskRedis,
}

#[derive(Default)]
struct Views {
    keys: HashMap<String, View>,
}

impl Views {
    fn decide(&mut self, key: &str, rate: Rate, now: Instant) -> Decision {
        let Some(v) = self.keys.get_mut(key) else {
            return Decision::AskRedis;
        };
        if v.rate != rate {
            return Decision::AskRedis;
        }
        if let Some(until) = v.refused_until {
            if now < until {
                return Decision::Refuse(Wait::from_duration(until - now));
            }
            v.refused_until = None;
        }
        if now.saturating_duration_since(v.counted_at) >= FRESH
            || v.counted + v.pending >= rate.count
        {
            return Decision::AskRedis;
        }
        v.pending += 1;
        Decision::Accept
    }

    /// Takes the hits of `key` that are still to be recorded.
    fn take(&mut self, key: &str) -> u64 {
        self.keys
            .get_mut(key)
            .map(|v| std::mem::take(&mut v.pending))
            .unwrap_or(0)
    }

    /// Takes every key's hits to record: (key, rate, hits).
    fn take_all(&mut self) -> Vec<(String, Rate, u64)> {
        self.keys
            .iter_mut()
            .filter(|(_, v)| v.pending > 0)
            .map(|(k, v)| (k.clone(), v.rate, std::mem::take(&mut v.pending)))
            .collect()
    }

    /// What Redis reported at `at`: `counted` hits, and a refusal of `wait_ms` if any.
    fn report(&mut self, key: &str, rate: Rate, counted: u64, wait_ms: Option<u64>, at: Instant) {
        let v = self.keys.entry(key.to_owned()).or_insert(View {
            rate,
            counted,
            counted_at: at,
            pending: 0,
            refused_until: None,
        });
        v.rate = rate;
        v.counted = counted;
        v.counted_at = at;
        if let Some(ms) = wait_ms {
            v.refused_until = Some(at + Duration::from_millis(ms));
        }
    }

    /// Forgets keys with nothing to record whose report has aged out of use.
    fn sweep(&mut self, now: Instant) {
        self.keys.retain(|_, v| {
            v.pending > 0
                || now.saturating_duration_since(v.counted_at) < FRESH
                || v.refused_until.is_some_and(|t| now < t)
        });
    }
}

/// Counters shared through Redis by all web processes.
pub struct RedisThrottle {
    /// Commands fail fast while disconnected: throttling must not hold requests.
    client: WithOptions<Client>,
    /// Digest of [`SCRIPT`] once loaded.
    script_sha: std::sync::Arc<tokio::sync::OnceCell<String>>,
    warnings: WarningLimiter,
    views: std::sync::Arc<Mutex<Views>>,
}

impl RedisThrottle {
    pub fn new(client: Client) -> RedisThrottle {
        let options = Options {
            fail_fast: true,
            timeout: Some(COMMAND_TIMEOUT),
            max_attempts: Some(1),
            ..Default::default()
        };
        let throttle = RedisThrottle {
            client: client.with_options(&options),
            script_sha: std::sync::Arc::default(),
            warnings: WarningLimiter::default(),
            views: std::sync::Arc::default(),
        };
        throttle.start_flushing();
        throttle
    }

    /// Records locally accepted hits every [`FLUSH_INTERVAL`] until the throttle is dropped.
    fn start_flushing(&self) {
        let views = std::sync::Arc::downgrade(&self.views);
        let client = self.client.clone();
        let sha = self.script_sha.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_sweep = Instant::now();
            loop {
                tick.tick().await;
                let Some(views) = views.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let due = {
                    let mut v = views.lock().unwrap_or_else(|e| e.into_inner());
                    if now.saturating_duration_since(last_sweep) >= FRESH {
                        v.sweep(now);
                        last_sweep = now;
                    }
                    v.take_all()
                };
                if due.is_empty() {
                    continue;
                }
                let (client, sha) = (&client, &*sha);
                let syncs = due.iter().map(|(key, rate, hits)| async move {
                    let member = uuid::Uuid::new_v4().simple().to_string();
                    run_script(client, sha, key, *rate, *hits, false, &member).await
                });
                let outcomes = futures_util::future::join_all(syncs).await;
                let at = Instant::now();
                let mut v = views.lock().unwrap_or_else(|e| e.into_inner());
                for ((key, rate, _), outcome) in due.iter().zip(outcomes) {
                    // Hits Redis did not take are not retried: like a request let through
                    // while Redis is away, they go uncounted.
                    if let Ok((_, counted, _)) = outcome {
                        v.report(key, *rate, counted, None, at);
                    }
                }
            }
        });
    }

    /// [`Throttle::check`]: locally while the key's view allows, else by Redis (which then
    /// also records this process's hits of the key).
    async fn check(&self, scope: &str, key: &str, rate: Rate) -> Result<(), Wait> {
        let redis_key = format!("{KEY_PREFIX}{scope}:{key}");
        let now = Instant::now();
        let hits = {
            let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
            match views.decide(&redis_key, rate, now) {
                Decision::Accept => return Ok(()),
                Decision::Refuse(wait) => return Err(wait),
                Decision::AskRedis => views.take(&redis_key),
            }
        };
        let member = uuid::Uuid::new_v4().simple().to_string();
        match self.ask(&redis_key, rate, hits, &member).await {
            Ok((accepted, counted, wait_ms)) => {
                let refused = (!accepted).then_some(wait_ms.max(1));
                self.views.lock().unwrap_or_else(|e| e.into_inner()).report(
                    &redis_key,
                    rate,
                    counted,
                    refused,
                    Instant::now(),
                );
                match refused {
                    None => Ok(()),
                    Some(ms) => Err(Wait::from_millis(ms)),
                }
            }
            Err(err) => {
                self.warn_unavailable(&err);
                Ok(())
            }
        }
    }

    fn warn_unavailable(&self, err: &Error) {
        if let Some(suppressed) = self.warnings.should_warn(Instant::now()) {
            let also = if suppressed > 0 {
                format!(" ({suppressed} more failures since the last warning)")
            } else {
                String::new()
            };
            tracing::warn!(
                "throttle: Redis unavailable, allowing requests unthrottled: {err}{also}"
            );
        }
    }

    /// Its own client, reconnecting in the background after it was connected once.
    pub async fn connect(url: &str) -> Result<RedisThrottle, Error> {
        let client = crate::daemon::redis::connected(url, COMMAND_TIMEOUT).await?;
        Ok(RedisThrottle::new(client))
    }

    /// Ok(true) when recorded as `member`, Ok(false) when let through unrecorded because
    /// Redis did not answer. Always one round trip: reservations must be exact.
    async fn check_exact(
        &self,
        scope: &str,
        key: &str,
        rate: Rate,
        member: &str,
    ) -> Result<bool, Wait> {
        let redis_key = format!("{KEY_PREFIX}{scope}:{key}");
        match self.ask(&redis_key, rate, 0, member).await {
            Ok((true, ..)) => Ok(true),
            Ok((false, _, wait_ms)) => Err(Wait::from_millis(wait_ms.max(1))),
            Err(err) => {
                self.warn_unavailable(&err);
                Ok(false)
            }
        }
    }

    /// [`SCRIPT`] with `check` = 1, in one bounded round trip. Not even queued while
    /// (re)connecting; the timeout also covers a client that was never connected, whose
    /// commands would wait forever.
    async fn ask(
        &self,
        redis_key: &str,
        rate: Rate,
        hits: u64,
        member: &str,
    ) -> Result<(bool, u64, u64), Error> {
        if !self.client.is_connected() {
            return Err(Error::new(ErrorKind::IO, "not connected"));
        }
        let script = run_script(
            &self.client,
            &self.script_sha,
            redis_key,
            rate,
            hits,
            true,
            member,
        );
        tokio::time::timeout(2 * COMMAND_TIMEOUT, script)
            .await
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, "no reply")))
    }

    /// Removes a recorded member; a failure only leaves it to expire with its window.
    async fn remove(&self, scope: &str, key: &str, member: &str) {
        let redis_key = format!("{KEY_PREFIX}{scope}:{key}");
        let removed: Result<Result<i64, Error>, _> =
            tokio::time::timeout(2 * COMMAND_TIMEOUT, self.client.zrem(redis_key, member)).await;
        if !matches!(removed, Ok(Ok(_))) {
            tracing::debug!("throttle: could not take back a reserved entry in Redis");
        }
    }
}

/// Runs [`SCRIPT`] for one key, loading it again after a script flush or a Redis restart:
/// (accepted, count in the window, wait in ms).
async fn run_script(
    client: &WithOptions<Client>,
    sha: &tokio::sync::OnceCell<String>,
    redis_key: &str,
    rate: Rate,
    hits: u64,
    check: bool,
    member: &str,
) -> Result<(bool, u64, u64), Error> {
    let args = vec![
        rate.count.to_string(),
        rate.period_secs.saturating_mul(1000).to_string(),
        hits.to_string(),
        if check { "1" } else { "0" }.to_string(),
        member.to_owned(),
    ];
    let digest = sha
        .get_or_try_init(|| client.script_load::<String, _>(SCRIPT))
        .await?;
    let result: Result<Vec<i64>, Error> = client
        .evalsha(digest.as_str(), redis_key, args.clone())
        .await;
    let values = match result {
        // The script cache was flushed or Redis restarted: load it again (same digest).
        Err(err) if err.details().starts_with("NOSCRIPT") => {
            let digest: String = client.script_load(SCRIPT).await?;
            client.evalsha(digest, redis_key, args).await?
        }
        result => result?,
    };
    match values.as_slice() {
        [accepted, counted, wait] => Ok((
            *accepted == 1,
            u64::try_from(*counted).unwrap_or(0),
            u64::try_from(*wait).unwrap_or(0),
        )),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            "unexpected throttle script reply",
        )),
    }
}

#[derive(Default)]
struct WarningLimiter {
    /// When the last warning was logged, and how many were suppressed since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarningLimiter {
    /// `Some(suppressed since the last warning)` when a warning should be logged now.
    fn should_warn(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| now.saturating_duration_since(at) < WARNING_INTERVAL) {
            *suppressed += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u64, period_secs: u64) -> Rate {
        Rate { count, period_secs }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn refusal_wording() {
        assert_eq!(
            wait_message(1),
            "Request was throttled. Expected available in 1 second."
        );
        assert_eq!(
            wait_message(2),
            "Request was throttled. Expected available in 2 seconds."
        );
        assert_eq!(
            wait_message(60),
            "Request was throttled. Expected available in 60 seconds."
        );
    }

    #[test]
    fn wait_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(Wait::from_duration(secs(59.0001)).seconds, 60);
        assert_eq!(Wait::from_duration(secs(60.0)).seconds, 60);
        assert_eq!(Wait::from_duration(secs(0.0004)).seconds, 1);
        assert_eq!(Wait::from_duration(Duration::ZERO).seconds, 1);
        assert_eq!(Wait::from_millis(1).seconds, 1);
        assert_eq!(Wait::from_millis(1001).seconds, 2);
    }

    #[test]
    fn memory_refuses_at_the_count_with_the_time_until_the_oldest_leaves() {
        let throttle = MemoryThrottle::new();
        let t0 = Instant::now();
        let r = rate(3, 60);
        assert_eq!(throttle.check_at("anon", "a", r, t0), Ok(()));
        assert_eq!(throttle.check_at("anon", "a", r, t0 + secs(10.0)), Ok(()));
        assert_eq!(throttle.check_at("anon", "a", r, t0 + secs(20.0)), Ok(()));
        // Oldest accepted at t0 leaves at t0+60: 39.5 s away, rounded up.
        assert_eq!(
            throttle.check_at("anon", "a", r, t0 + secs(20.5)),
            Err(Wait { seconds: 40 })
        );
        assert_eq!(
            throttle.check_at("anon", "a", r, t0 + secs(59.2)),
            Err(Wait { seconds: 1 })
        );
        // Other keys and other scopes have their own budgets.
        assert_eq!(throttle.check_at("anon", "b", r, t0 + secs(21.0)), Ok(()));
        assert_eq!(throttle.check_at("user", "a", r, t0 + secs(21.0)), Ok(()));
    }

    #[test]
    fn memory_window_slides_and_refusals_are_not_recorded() {
        let throttle = MemoryThrottle::new();
        let t0 = Instant::now();
        let r = rate(2, 10);
        assert_eq!(throttle.check_at("s", "k", r, t0), Ok(()));
        assert_eq!(throttle.check_at("s", "k", r, t0 + secs(1.0)), Ok(()));
        assert_eq!(
            throttle.check_at("s", "k", r, t0 + secs(2.0)),
            Err(Wait { seconds: 8 })
        );
        // Exactly one period later the first request has left (DRF: `<= now - duration`).
        // Had the refusal at t0+2 been recorded, this would still be refused.
        assert_eq!(throttle.check_at("s", "k", r, t0 + secs(10.0)), Ok(()));
        // t0+1 and t0+10 are in the window; t0+1 leaves at t0+11.
        assert_eq!(
            throttle.check_at("s", "k", r, t0 + secs(10.6)),
            Err(Wait { seconds: 1 })
        );
        assert_eq!(throttle.check_at("s", "k", r, t0 + secs(11.0)), Ok(()));
    }

    #[test]
    fn memory_with_a_one_second_period_and_a_zero_count() {
        let throttle = MemoryThrottle::new();
        let t0 = Instant::now();
        let r = rate(1, 1);
        assert_eq!(throttle.check_at("s", "k", r, t0), Ok(()));
        assert_eq!(
            throttle.check_at("s", "k", r, t0 + secs(0.3)),
            Err(Wait { seconds: 1 })
        );
        assert_eq!(throttle.check_at("s", "k", r, t0 + secs(1.0)), Ok(()));
        assert_eq!(
            throttle.check_at("s", "zero", rate(0, 60), t0),
            Err(Wait { seconds: 60 })
        );
    }

    #[test]
    fn memory_wait_after_the_rate_was_lowered_waits_for_enough_hits_to_leave() {
        let throttle = MemoryThrottle::new();
        let t0 = Instant::now();
        for i in 0..4 {
            let at = t0 + secs(f64::from(i));
            assert_eq!(throttle.check_at("s", "k", rate(5, 60), at), Ok(()));
        }
        // Four hits (t0..t0+3) against a limit of 2: below it once t0+2 has left, at t0+62.
        assert_eq!(
            throttle.check_at("s", "k", rate(2, 60), t0 + secs(30.0)),
            Err(Wait { seconds: 32 })
        );
    }

    #[tokio::test]
    async fn memory_backend_behind_the_common_api() {
        let throttle = connect(None).await;
        assert_eq!(throttle.backend(), "memory");
        assert_eq!(throttle.check("anon", "ip", rate(1, 3600)).await, Ok(()));
        let wait = throttle
            .check("anon", "ip", rate(1, 3600))
            .await
            .expect_err("second request refused");
        assert!((3599..=3600).contains(&wait.seconds), "{wait:?}");
    }

    #[tokio::test]
    async fn released_reservations_no_longer_count() {
        let throttle = Throttle::memory();
        let r = rate(2, 60);
        let first = throttle.reserve("login", "alice", r).await.expect("first");
        throttle.reserve("login", "alice", r).await.expect("second");
        assert!(throttle.reserve("login", "alice", r).await.is_err());
        throttle.release(first).await;
        let third = throttle
            .reserve("login", "alice", r)
            .await
            .expect("room again");
        assert!(throttle.reserve("login", "alice", r).await.is_err());
        // A release frees exactly its own entry; another key has its own budget.
        throttle.release(third).await;
        throttle
            .reserve("login", "bob", rate(1, 60))
            .await
            .expect("bob");
        assert!(throttle.reserve("login", "bob", rate(1, 60)).await.is_err());
    }

    #[test]
    fn memory_sweeps_expired_keys() {
        let throttle = MemoryThrottle::new();
        let t0 = Instant::now();
        for i in 0..5000 {
            let key = format!("client-{i}");
            assert_eq!(throttle.check_at("anon", &key, rate(5, 1), t0), Ok(()));
        }
        let len = || throttle.state.lock().expect("lock").histories.len();
        assert_eq!(len(), 5000, "nothing has expired yet");
        let later = t0 + SWEEP_INTERVAL + secs(1.0);
        assert_eq!(throttle.check_at("anon", "new", rate(5, 1), later), Ok(()));
        assert_eq!(len(), 1, "only the live key is left");
    }

    #[test]
    fn memory_culls_the_least_recently_used_keys_beyond_the_cap() {
        let throttle = MemoryThrottle::with_max_keys(3000);
        let t0 = Instant::now();
        // All live for a day, so only the cap can drop them.
        for i in 0..5000u32 {
            let key = format!("client-{i}");
            let at = t0 + Duration::from_millis(u64::from(i));
            assert_eq!(throttle.check_at("anon", &key, rate(5, 86_400), at), Ok(()));
        }
        let state = throttle.state.lock().expect("lock");
        assert!(
            state.histories.len() <= 3000 + state.sweep_above_len,
            "{}",
            state.histories.len()
        );
        assert!(state.histories.len() < 5000);
        // The newest key survived every cull.
        assert!(
            state
                .histories
                .contains_key(&("anon".to_string(), "client-4999".to_string()))
        );
    }

    #[test]
    fn redis_warnings_are_rate_limited_and_count_the_suppressed() {
        let limiter = WarningLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.should_warn(t0), Some(0));
        assert_eq!(limiter.should_warn(t0 + secs(1.0)), None);
        assert_eq!(limiter.should_warn(t0 + secs(59.0)), None);
        assert_eq!(limiter.should_warn(t0 + WARNING_INTERVAL), Some(2));
        assert_eq!(limiter.should_warn(t0 + WARNING_INTERVAL + secs(1.0)), None);
    }

    /// The test Redis (`KEYSTONE_TEST_REDIS`, default db 15 on localhost), or None to skip
    /// (a failure when `KEYSTONE_TEST_REQUIRE` names redis).
    async fn test_redis() -> Option<String> {
        let url = std::env::var("KEYSTONE_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_string());
        let required = std::env::var("KEYSTONE_TEST_REQUIRE")
            .map(|v| v.contains("redis"))
            .unwrap_or(false);
        match crate::infra::health::check_redis(&url).await {
            Ok(()) => Some(url),
            Err(err) if required => panic!("Redis at {url} is required but unreachable: {err}"),
            Err(err) => {
                eprintln!("skipping: Redis at {url} unreachable ({err})");
                None
            }
        }
    }

    /// A scope no other test run uses, so parallel runs do not share budgets.
    fn unique_scope(name: &str) -> String {
        format!("test-{}-{name}", uuid::Uuid::new_v4().simple())
    }

    async fn redis_throttle(url: &str) -> Throttle {
        let throttle = connect(Some(url.to_string())).await;
        assert_eq!(throttle.backend(), "redis");
        throttle
    }

    #[tokio::test]
    async fn redis_processes_share_one_budget_per_scope_and_key() {
        let Some(url) = test_redis().await else {
            return;
        };
        let web1 = redis_throttle(&url).await;
        let web2 = redis_throttle(&url).await;
        let anon = unique_scope("anon");
        let user = unique_scope("user");
        let r = rate(3, 60);
        // Each process accepts locally on what Redis last told it; once that has been
        // refreshed (a flush, or FRESH passed), both count against one budget.
        let settle = || tokio::time::sleep(FRESH + 3 * FLUSH_INTERVAL);
        assert_eq!(web1.check(&anon, "203.0.113.7", r).await, Ok(()));
        settle().await;
        assert_eq!(web2.check(&anon, "203.0.113.7", r).await, Ok(()));
        settle().await;
        assert_eq!(web1.check(&anon, "203.0.113.7", r).await, Ok(()));
        settle().await;
        for web in [&web1, &web2] {
            let wait = web
                .check(&anon, "203.0.113.7", r)
                .await
                .expect_err("budget used up by both processes");
            assert!((59..=60).contains(&wait.seconds), "{wait:?}");
        }
        // Same key in another scope, and another key in the same scope: separate budgets.
        assert_eq!(web2.check(&user, "203.0.113.7", r).await, Ok(()));
        assert_eq!(web2.check(&anon, "203.0.113.8", r).await, Ok(()));
        // The refusals were not recorded: still exactly the three accepted entries.
        let Throttle::Redis(redis) = &web1 else {
            unreachable!("checked by redis_throttle")
        };
        let key = format!("{KEY_PREFIX}{anon}:203.0.113.7");
        let card: u64 = redis.client.zcard(key.as_str()).await.expect("zcard");
        assert_eq!(card, 3);
        let ttl: i64 = redis.client.pttl(key.as_str()).await.expect("pttl");
        assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    }

    #[tokio::test]
    async fn redis_bursts_are_decided_locally_and_recorded_exactly() {
        let Some(url) = test_redis().await else {
            return;
        };
        let web = redis_throttle(&url).await;
        let scope = unique_scope("burst");
        let r = rate(5, 60);
        let mut accepted = 0;
        for _ in 0..12 {
            match web.check(&scope, "k", r).await {
                Ok(()) => accepted += 1,
                Err(wait) => assert!((59..=60).contains(&wait.seconds), "{wait:?}"),
            }
        }
        assert_eq!(accepted, 5, "one process alone is exact");
        tokio::time::sleep(3 * FLUSH_INTERVAL).await;
        let Throttle::Redis(redis) = &web else {
            unreachable!("checked by redis_throttle")
        };
        let key = format!("{KEY_PREFIX}{scope}:k");
        let card: u64 = redis.client.zcard(key.as_str()).await.expect("zcard");
        assert_eq!(
            card, 5,
            "the locally accepted hits are recorded, refusals are not"
        );
    }

    #[tokio::test]
    async fn redis_overshoot_with_two_busy_processes_stays_within_its_bound() {
        let Some(url) = test_redis().await else {
            return;
        };
        let web1 = std::sync::Arc::new(redis_throttle(&url).await);
        let web2 = std::sync::Arc::new(redis_throttle(&url).await);
        let scope = unique_scope("two");
        let r = rate(50, 60);
        let hammer = |web: std::sync::Arc<Throttle>, scope: String| {
            tokio::spawn(async move {
                let mut accepted = 0u64;
                for _ in 0..200 {
                    if web.check(&scope, "k", r).await.is_ok() {
                        accepted += 1;
                    }
                }
                accepted
            })
        };
        let (a, b) = tokio::join!(hammer(web1, scope.clone()), hammer(web2, scope.clone()));
        let total = a.expect("first") + b.expect("second");
        assert!(
            (50..=100).contains(&total),
            "accepted {total} of 400 at 50/min"
        );
    }

    #[test]
    fn local_views_accept_until_the_reported_count_reaches_the_rate() {
        let mut views = Views::default();
        let r = rate(3, 60);
        let t0 = Instant::now();
        assert_eq!(
            views.decide("k", r, t0),
            Decision::AskRedis,
            "never reported"
        );
        views.report("k", r, 1, None, t0);
        assert_eq!(views.decide("k", r, t0), Decision::Accept);
        assert_eq!(views.decide("k", r, t0), Decision::Accept);
        assert_eq!(
            views.decide("k", r, t0),
            Decision::AskRedis,
            "1 counted + 2 pending"
        );
        assert_eq!(views.take_all(), vec![("k".to_string(), r, 2)]);
        assert_eq!(views.take("k"), 0);
        views.report("k", r, 3, Some(30_000), t0);
        assert_eq!(
            views.decide("k", r, t0 + secs(10.0)),
            Decision::Refuse(Wait { seconds: 20 })
        );
        // Once the refusal has run out, Redis decides again.
        assert_eq!(views.decide("k", r, t0 + secs(31.0)), Decision::AskRedis);
        // A stale report is not used; a changed rate is not either.
        views.report("k", r, 0, None, t0);
        assert_eq!(views.decide("k", r, t0 + FRESH), Decision::AskRedis);
        assert_eq!(views.decide("k", rate(9, 60), t0), Decision::AskRedis);
        views.sweep(t0 + FRESH);
        assert!(views.keys.is_empty());
    }

    #[tokio::test]
    async fn redis_reservations_are_shared_and_released() {
        let Some(url) = test_redis().await else {
            return;
        };
        let web1 = redis_throttle(&url).await;
        let web2 = redis_throttle(&url).await;
        let scope = unique_scope("login");
        let r = rate(2, 900);
        let kept = web1.reserve(&scope, "alice", r).await.expect("first");
        let taken_back = web2.reserve(&scope, "alice", r).await.expect("second");
        assert!(
            web1.reserve(&scope, "alice", r).await.is_err(),
            "shared budget"
        );
        web2.release(taken_back).await;
        web1.reserve(&scope, "alice", r)
            .await
            .expect("room after the release");
        let wait = web2
            .reserve(&scope, "alice", r)
            .await
            .expect_err("full again");
        assert!((899..=900).contains(&wait.seconds), "{wait:?}");
        drop(kept);
    }

    #[tokio::test]
    async fn redis_window_slides() {
        let Some(url) = test_redis().await else {
            return;
        };
        let throttle = redis_throttle(&url).await;
        let scope = unique_scope("slide");
        let r = rate(2, 1);
        assert_eq!(throttle.check(&scope, "k", r).await, Ok(()));
        assert_eq!(throttle.check(&scope, "k", r).await, Ok(()));
        assert_eq!(
            throttle.check(&scope, "k", r).await,
            Err(Wait { seconds: 1 })
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(throttle.check(&scope, "k", r).await, Ok(()));
    }

    #[tokio::test]
    async fn redis_reloads_a_flushed_script() {
        let Some(url) = test_redis().await else {
            return;
        };
        let throttle = redis_throttle(&url).await;
        let scope = unique_scope("noscript");
        assert_eq!(throttle.check(&scope, "k", rate(5, 60)).await, Ok(()));
        let Throttle::Redis(redis) = &throttle else {
            unreachable!("checked by redis_throttle")
        };
        // Stands in for SCRIPT FLUSH or a Redis restart (a real flush would disturb
        // parallel tests): the cached digest is unknown to the server.
        let stale = tokio::sync::OnceCell::new_with(Some("0".repeat(40)));
        let key = format!("{KEY_PREFIX}{scope}:k");
        let result = run_script(&redis.client, &stale, &key, rate(5, 60), 0, true, "m").await;
        assert_eq!(result.expect("reloaded and ran"), (true, 2, 0));
        let card: u64 = redis.client.zcard(key.as_str()).await.expect("zcard");
        assert_eq!(card, 2);
        // Locally accepted hits are recorded by the same script.
        let stale = tokio::sync::OnceCell::new_with(Some("0".repeat(40)));
        let synced = run_script(&redis.client, &stale, &key, rate(5, 60), 2, true, "n").await;
        assert_eq!(synced.expect("reloaded and ran"), (true, 5, 0));
        let card: u64 = redis.client.zcard(key.as_str()).await.expect("zcard");
        assert_eq!(card, 5, "two recorded hits and the accepted request");
    }

    #[tokio::test]
    async fn unreachable_redis_allows_requests() {
        // Nothing listens on port 1: the initial connection fails and memory takes over.
        let throttle = connect(Some("redis://127.0.0.1:1/15".to_string())).await;
        assert_eq!(throttle.backend(), "memory");
        assert_eq!(throttle.check("anon", "k", rate(1, 60)).await, Ok(()));

        // A Redis throttle whose server is gone fails open on every request.
        let client = Builder::from_config(Config::from_url("redis://127.0.0.1:1/15").expect("url"))
            .build()
            .expect("client");
        let throttle = Throttle::redis(client);
        assert_eq!(throttle.backend(), "redis");
        let started = Instant::now();
        for _ in 0..3 {
            assert_eq!(throttle.check("anon", "k", rate(1, 60)).await, Ok(()));
        }
        assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    }
}
