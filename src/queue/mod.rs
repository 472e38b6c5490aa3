//! The task queue (operations.md §2.1): a small [`Queue`] trait with two implementations,
//! [`RedisQueue`] (a Redis stream read by a consumer group: at-least-once delivery, reclaim
//! after the visibility timeout, delayed retries, a dead-letter stream, beat's leader lease)
//! and [`LocalQueue`] (in-process, for `serve --role all` without Redis). [`Tasks`] is the
//! producer side that tasks, beat and `keystone task run` enqueue through.
//!
//! Redis keys, all under `redis.prefix` (default `keystone`):
//! `<p>:tasks` (stream, consumer group `workers`), `<p>:tasks:delayed` (sorted set of
//! retries by due time), `<p>:tasks:dead` (dead-letter stream), `<p>:beat:leader` and
//! `<p>:beat:epoch` (leader lease and its fencing epoch), `<p>:beat:tick:<entry>:<time>`
//! (one key per schedule tick).

use crate::config::Config;
use crate::store::Db;
use crate::store::task_results as results;
use chrono::{DateTime, Utc};
use fred::prelude::{
    Client, ClientLike, Error as RedisError, LuaInterface, Options, StreamsInterface,
    Value as RedisValue,
};
use fred::types::streams::XID;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";
/// Dead letters kept (approximately) in the dead-letter stream.
const DEAD_LETTER_CAP: u64 = 10_000;
/// Entries moved from the delayed set back to the stream per housekeeping round.
const PROMOTE_BATCH: u64 = 100;

/// One queued run of a task: what travels through the queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// The run's `task_id`; retries of the run keep it.
    pub id: String,
    /// Dotted task name (§2.3).
    pub task: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Schedule entry that enqueued the run (`periodic_task_name`); none for manual runs
    /// and sub-tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic: Option<String>,
    /// The schedule tick (fire time) a beat run belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Failed attempts before this one (0 on the first run).
    #[serde(default)]
    pub attempt: u32,
}

impl Message {
    /// A first run of `task(args)` with a fresh `task_id`.
    pub fn new(task: &str, args: Vec<Value>) -> Message {
        Message {
            id: uuid::Uuid::new_v4().to_string(),
            task: task.to_string(),
            args,
            periodic: None,
            scheduled_for: None,
            attempt: 0,
        }
    }

    /// The JSON text stored in the queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a queued message; the error says what is wrong with the text.
    pub fn from_json(text: &str) -> Result<Message, String> {
        serde_json::from_str(text).map_err(|e| format!("unreadable task message ({e})"))
    }
}

/// A message handed to this worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Queue-specific receipt (the stream entry id) to ack, extend or release it with.
    pub receipt: String,
    /// The stored text, kept for the dead-letter stream when it cannot be read.
    pub raw: String,
    /// The message, or why the entry could not be read as one.
    pub message: Result<Message, String>,
    /// Times the entry has been delivered, this delivery included.
    pub deliveries: u64,
}

impl Delivery {
    fn new(receipt: String, raw: String, deliveries: u64) -> Delivery {
        let message = Message::from_json(&raw);
        Delivery {
            receipt,
            raw,
            message,
            deliveries,
        }
    }
}

/// A queued task that will not be tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Entry id in the dead-letter stream.
    pub id: String,
    pub failed_at: Option<DateTime<Utc>>,
    /// The message text as queued.
    pub raw: String,
    pub reason: String,
    /// The worker that gave up on it.
    pub worker: String,
    pub deliveries: u64,
}

impl DeadLetter {
    /// The queued message, when its text is readable.
    pub fn message(&self) -> Option<Message> {
        Message::from_json(&self.raw).ok()
    }
}

/// Queue sizes sampled by housekeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Queued and not yet handed to a worker.
    pub ready: u64,
    /// Handed to a worker and not yet acknowledged.
    pub unacked: u64,
    /// Retries waiting for their backoff delay.
    pub delayed: u64,
}

/// A beat tick to enqueue at most once.
#[derive(Debug, Clone)]
pub struct Tick<'a> {
    /// Schedule entry name.
    pub entry: &'a str,
    /// The scheduled fire time.
    pub at: DateTime<Utc>,
    /// The leader lease token of the beat enqueuing it (fencing).
    pub lease: &'a str,
    /// How long the (entry, time) guard is kept.
    pub guard_ttl: Duration,
}

/// What became of a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    Enqueued,
    /// Another beat (or an earlier attempt) already enqueued this tick.
    AlreadyEnqueued,
    /// The lease is no longer ours: nothing was enqueued.
    NotLeader,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("{0}")]
    Other(String),
}

/// The operations the worker, beat and the CLI need from a queue. Kept small so that a
/// PostgreSQL-backed queue could be added later.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Where tasks go, for logs and status lines.
    fn describe(&self) -> String;
    /// Prepares consuming (the consumer group and this consumer).
    async fn register(&self) -> Result<(), BrokerError>;
    /// Adds a message.
    async fn push(&self, msg: &Message) -> Result<(), BrokerError>;
    /// Adds a beat tick's message unless the tick was enqueued before or `tick.lease` is
    /// no longer the current leader lease.
    async fn push_tick(&self, msg: &Message, tick: &Tick<'_>) -> Result<TickOutcome, BrokerError>;
    /// At most `max` messages for this worker (redeliveries of abandoned ones first),
    /// waiting up to `wait` when none is ready.
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError>;
    /// Keeps a running delivery ours (not reclaimed by other workers); false when another
    /// worker has already taken it over (true when nobody holds it any more: acknowledged
    /// by a run that took it over and finished, or lost with Redis's data).
    async fn extend(&self, d: &Delivery) -> Result<bool, BrokerError>;
    /// Done with a delivery: it is never delivered again.
    async fn ack(&self, d: &Delivery) -> Result<(), BrokerError>;
    /// Acknowledges a delivery and queues `next` (its retry) after `delay`, atomically.
    async fn retry_later(
        &self,
        d: &Delivery,
        next: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError>;
    /// Acknowledges a delivery and moves it to the dead letters, atomically.
    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), BrokerError>;
    /// Gives up an unfinished delivery (stopping worker) so another worker can take it now.
    async fn release(&self, d: &Delivery) -> Result<(), BrokerError>;
    /// Moves due retries back to the queue, trims handled entries, and reports sizes.
    async fn housekeeping(&self) -> Result<QueueStats, BrokerError>;
    /// The most recent dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;
    /// Takes the beat leader lease when free; returns its token.
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError>;
    /// Extends the lease; false when it is no longer ours.
    async fn renew_lease(&self, token: &str, ttl: Duration) -> Result<bool, BrokerError>;
    /// Gives the lease up if it is still ours.
    async fn release_lease(&self, token: &str) -> Result<(), BrokerError>;
    /// Called once when a worker stops cleanly (forgets this consumer if it holds nothing).
    async fn retire(&self) {}
    /// The ids of every task it still holds (queued, running or waiting for a retry), to
    /// tell rows whose message was lost; None when it cannot say (the in-process queue).
    async fn task_ids(&self) -> Result<Option<std::collections::HashSet<String>>, BrokerError> {
        Ok(None)
    }
    /// At exit, the tasks that are lost with this process (queued, waiting for a retry, or
    /// released unfinished); None for a queue whose tasks outlive the process.
    fn abandon(&self) -> Option<Vec<Result<Message, String>>> {
        None
    }
}

/// Connects the queue a `serve` process or the CLI uses: Redis when configured, else None.
pub async fn connect_redis(
    config: &Config,
    consumer: &str,
) -> Result<Option<Arc<RedisQueue>>, BrokerError> {
    match config.redis_url() {
        None => Ok(None),
        Some(url) => Ok(Some(Arc::new(
            RedisQueue::connect(
                &url,
                &config.settings.redis.prefix,
                consumer,
                Duration::from_secs(config.settings.worker.visibility_timeout),
            )
            .await?,
        ))),
    }
}

/// Enqueues `name(args)` through the configured Redis broker (for one-shot commands such as
/// `keystone task run` and `keystone ldap sync --queue`); returns the task id.
pub async fn submit(
    config: &Config,
    db: &Db,
    name: &str,
    args: Vec<Value>,
) -> Result<String, BrokerError> {
    let queue = connect_redis(config, &crate::daemon::node_id())
        .await?
        .ok_or_else(|| {
            BrokerError::Other(
                "no broker configured: set redis.host or redis.url (REDIS_HOST)".into(),
            )
        })?;
    let tasks = Tasks::new(queue, db.clone());
    tasks.submit(Message::new(name, args)).await
}

// ---------------------------------------------------------------------------------------
// Producer

/// The producer side: pushes a message and records its `PENDING` task-result row. Tasks
/// enqueue sub-tasks through it (the roles give it `tasks::Enqueue`).
#[derive(Clone)]
pub struct Tasks {
    queue: Arc<dyn Queue>,
    db: Db,
}

impl Tasks {
    pub fn new(queue: Arc<dyn Queue>, db: Db) -> Tasks {
        Tasks { queue, db }
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Queues a message and returns its task id.
    pub async fn submit(&self, msg: Message) -> Result<String, BrokerError> {
        self.queue.push(&msg).await?;
        self.record_pending(&msg).await;
        Ok(msg.id)
    }

    /// The `PENDING` row of a queued message (never overwrites a row a worker already wrote).
    pub async fn record_pending(&self, msg: &Message) {
        let run = results::Run {
            task_id: &msg.id,
            task_name: &msg.task,
            periodic_task_name: msg.periodic.as_deref(),
            args: &msg.args,
            worker: "",
        };
        if let Err(e) = results::write_pending(&self.db, &run).await {
            tracing::warn!(task = %msg.task, task_id = %msg.id, "cannot record the queued task: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// In-process queue

/// The in-process queue of `serve --role all` without Redis: nothing survives the process,
/// which also runs the only worker and beat.
#[derive(Default)]
pub struct LocalQueue {
    state: Mutex<LocalState>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct LocalState {
    next_receipt: u64,
    queued: VecDeque<(String, String)>,
    delayed: Vec<(Instant, String)>,
    running: u64,
    dead: VecDeque<DeadLetter>,
    /// Unfinished runs handed back at exit.
    released: Vec<String>,
}

impl LocalQueue {
    pub fn new() -> Arc<LocalQueue> {
        Arc::new(LocalQueue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue_raw(&self, raw: String) {
        let mut s = self.lock();
        s.next_receipt += 1;
        let receipt = format!("local-{}", s.next_receipt);
        s.queued.push_back((receipt, raw));
        drop(s);
        self.ready.notify_one();
    }

    fn promote_due(s: &mut LocalState, now: Instant) -> Vec<String> {
        let (due, later): (Vec<_>, Vec<_>) = s.delayed.drain(..).partition(|(at, _)| *at <= now);
        s.delayed = later;
        due.into_iter().map(|(_, raw)| raw).collect()
    }

    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut s = self.lock();
        for raw in Self::promote_due(&mut s, Instant::now()) {
            s.next_receipt += 1;
            let receipt = format!("local-{}", s.next_receipt);
            s.queued.push_back((receipt, raw));
        }
        let n = max.min(s.queued.len());
        let out: Vec<Delivery> = s
            .queued
            .drain(..n)
            .map(|(receipt, raw)| Delivery::new(receipt, raw, 1))
            .collect();
        s.running += out.len() as u64;
        out
    }

    fn finished(&self) {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
    }
}

#[async_trait::async_trait]
impl Queue for LocalQueue {
    fn describe(&self) -> String {
        "in-process queue".into()
    }

    async fn register(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn push(&self, msg: &Message) -> Result<(), BrokerError> {
        self.enqueue_raw(msg.to_json());
        Ok(())
    }

    async fn push_tick(&self, msg: &Message, _tick: &Tick<'_>) -> Result<TickOutcome, BrokerError> {
        // One process, one beat: nothing to guard against.
        self.enqueue_raw(msg.to_json());
        Ok(TickOutcome::Enqueued)
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            let got = self.take(max);
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // Wake for a push, or in time for the next due retry.
            let next_retry = self.lock().delayed.iter().map(|(at, _)| *at).min();
            let until = next_retry.map_or(deadline, |at| at.min(deadline));
            let _ =
                tokio::time::timeout(until.saturating_duration_since(now), self.ready.notified())
                    .await;
        }
    }

    async fn extend(&self, _d: &Delivery) -> Result<bool, BrokerError> {
        Ok(true)
    }

    async fn ack(&self, _d: &Delivery) -> Result<(), BrokerError> {
        self.finished();
        Ok(())
    }

    async fn retry_later(
        &self,
        _d: &Delivery,
        next: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        s.delayed.push((Instant::now() + delay, next.to_json()));
        Ok(())
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        s.dead.push_front(DeadLetter {
            id: d.receipt.clone(),
            failed_at: Some(Utc::now()),
            raw: d.raw.clone(),
            reason: reason.to_string(),
            worker: crate::daemon::node_id(),
            deliveries: d.deliveries,
        });
        s.dead.truncate(1000);
        Ok(())
    }

    async fn release(&self, d: &Delivery) -> Result<(), BrokerError> {
        // The process is stopping; an in-process queue ends with it (see `abandon`).
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        s.released.push(d.raw.clone());
        Ok(())
    }

    fn abandon(&self) -> Option<Vec<Result<Message, String>>> {
        let mut s = self.lock();
        let released = std::mem::take(&mut s.released);
        let queued = s.queued.drain(..).map(|(_, raw)| raw).collect::<Vec<_>>();
        let delayed = s.delayed.drain(..).map(|(_, raw)| raw).collect::<Vec<_>>();
        let lost = released.into_iter().chain(queued).chain(delayed);
        Some(lost.map(|raw| Message::from_json(&raw)).collect())
    }

    async fn housekeeping(&self) -> Result<QueueStats, BrokerError> {
        let s = self.lock();
        Ok(QueueStats {
            ready: s.queued.len() as u64,
            unacked: s.running,
            delayed: s.delayed.len() as u64,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        Ok(self.lock().dead.iter().take(limit).cloned().collect())
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        _ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        Ok(Some(format!("{holder}#local")))
    }

    async fn renew_lease(&self, _token: &str, _ttl: Duration) -> Result<bool, BrokerError> {
        Ok(true)
    }

    async fn release_lease(&self, _token: &str) -> Result<(), BrokerError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Redis

/// A Lua script run by digest, loaded again when Redis lost its script cache (restart).
struct Script {
    text: &'static str,
    sha: tokio::sync::RwLock<Option<String>>,
}

impl Script {
    const fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: tokio::sync::RwLock::const_new(None),
        }
    }

    async fn load(&self, client: &Client) -> Result<String, RedisError> {
        let sha: String = client.script_load(self.text).await?;
        *self.sha.write().await = Some(sha.clone());
        Ok(sha)
    }

    async fn run<R: fred::types::FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, RedisError> {
        let known = self.sha.read().await.clone();
        let sha = match known {
            Some(sha) => sha,
            None => self.load(client).await?,
        };
        match client.evalsha(sha, keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let sha = self.load(client).await?;
                client.evalsha(sha, keys, args).await
            }
            other => other,
        }
    }
}

/// Claims entries idle longer than the visibility timeout (their worker died) and returns
/// `{id, fields, deliveries}` for each. KEYS: stream. ARGV: group, consumer, min idle ms,
/// count.
const RECLAIM: &str = r#"
local want = tonumber(ARGV[4])
local claimed = {}
local cursor = '0-0'
local rounds = 0
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', want - #claimed)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local n = 1
    if p[1] then n = p[1][4] end
    claimed[#claimed + 1] = {e[1], e[2] or {}, n}
  end
  rounds = rounds + 1
until cursor == '0-0' or #claimed >= want or rounds >= 10
return claimed
"#;

/// Resets the idle time of an entry this consumer still owns (ARGV[4] = 0: keep running)
/// or makes it claimable at once (ARGV[4] = visibility: release). Does not count as a
/// delivery. KEYS: stream. ARGV: group, consumer, id, idle ms. Returns 1 when done, 0 when
/// another consumer owns the entry, 2 when nobody does (acknowledged, or lost with Redis's
/// data).
const TOUCH: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] then return 2 end
if p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
"#;

/// Acknowledges an entry and schedules its retry. KEYS: stream, delayed. ARGV: group, id,
/// delay ms, message.
const RETRY: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"#;

/// Acknowledges an entry and appends it to the dead letters. KEYS: stream, dead. ARGV:
/// group, id, cap, then field/value pairs.
const DEAD: &str = r#"
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"#;

/// Moves due retries back to the stream. KEYS: delayed, stream. ARGV: batch size.
const PROMOTE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'task', m)
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#;

/// Trims entries every consumer is done with (never the oldest unacknowledged one or
/// anything not yet delivered), forgets long-idle consumers that hold nothing, and returns
/// {ready, unacked, delayed}. KEYS: stream, delayed. ARGV: group, forget-after ms.
const TRIM: &str = r#"
local delayed = redis.call('ZCARD', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, delayed} end
local last, lag, pending = nil, nil, 0
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local h = {}
  for i = 1, #g, 2 do h[g[i]] = g[i + 1] end
  if h['name'] == ARGV[1] then
    last = h['last-delivered-id']
    lag = h['lag']
    pending = h['pending']
  end
end
if not last then return {redis.call('XLEN', KEYS[1]), 0, delayed} end
if not lag then
  lag = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 10000)
end
local minid = last
if pending > 0 then
  minid = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', minid)
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local h = {}
  for i = 1, #c, 2 do h[c[i]] = c[i + 1] end
  if h['pending'] == 0 and h['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], h['name'])
  end
end
return {lag, pending, delayed}
"#;

/// Takes the leader lease when nobody holds it, with the next fencing epoch in its token.
/// KEYS: leader, epoch. ARGV: holder, ttl ms.
const LEASE_ACQUIRE: &str = r#"
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
local token = ARGV[1] .. '#' .. epoch
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], epoch)
  return token
end
return false
"#;

/// Extends the lease if it is still ours. KEYS: leader. ARGV: token, ttl ms.
const LEASE_RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Deletes the lease if it is still ours (compare-and-delete). KEYS: leader. ARGV: token.
const LEASE_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Enqueues a tick once: only under the current lease (fencing), only if no tick guard
/// exists. KEYS: leader, guard, stream. ARGV: token, guard ttl ms, message.
const TICK: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('XADD', KEYS[3], '*', 'task', ARGV[3])
return 1
"#;

static SCRIPT_RECLAIM: Script = Script::new(RECLAIM);
static SCRIPT_TOUCH: Script = Script::new(TOUCH);
static SCRIPT_RETRY: Script = Script::new(RETRY);
static SCRIPT_DEAD: Script = Script::new(DEAD);
static SCRIPT_PROMOTE: Script = Script::new(PROMOTE);
static SCRIPT_TRIM: Script = Script::new(TRIM);
static SCRIPT_LEASE_ACQUIRE: Script = Script::new(LEASE_ACQUIRE);
static SCRIPT_LEASE_RENEW: Script = Script::new(LEASE_RENEW);
static SCRIPT_LEASE_RELEASE: Script = Script::new(LEASE_RELEASE);
static SCRIPT_TICK: Script = Script::new(TICK);

/// Idle consumers holding nothing are forgotten after a day.
const FORGET_CONSUMER_MS: u64 = 24 * 3600 * 1000;
/// How often a fetch first looks for abandoned entries to reclaim.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);

/// The Redis key names of one installation (`redis.prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    pub stream: String,
    pub delayed: String,
    pub dead: String,
    pub leader: String,
    pub epoch: String,
    pub tick_prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            stream: format!("{prefix}:tasks"),
            delayed: format!("{prefix}:tasks:delayed"),
            dead: format!("{prefix}:tasks:dead"),
            leader: format!("{prefix}:beat:leader"),
            epoch: format!("{prefix}:beat:epoch"),
            tick_prefix: format!("{prefix}:beat:tick"),
        }
    }
}

/// The Redis Streams queue.
pub struct RedisQueue {
    /// Short commands and scripts.
    client: Client,
    /// Blocking reads only (a blocked connection cannot serve other commands); connected
    /// on first use so producers never open it.
    reader: tokio::sync::OnceCell<Client>,
    keys: Keys,
    consumer: String,
    visibility: Duration,
    last_reclaim: Mutex<Option<Instant>>,
}

fn is_nogroup(e: &RedisError) -> bool {
    e.details().contains("NOGROUP")
}

fn value_text(v: &RedisValue) -> Option<String> {
    v.as_str().map(|s| s.to_string())
}

/// `[field, value, ...]` → the value of `name`.
fn field(fields: &RedisValue, name: &str) -> Option<String> {
    let RedisValue::Array(items) = fields else {
        return None;
    };
    items
        .chunks(2)
        .find(|kv| kv.first().and_then(|k| k.as_str()).as_deref() == Some(name))
        .and_then(|kv| kv.get(1))
        .and_then(value_text)
}

/// The `(id, task field)` pairs of an `XREADGROUP` reply, in RESP2 (`[[stream, entries]]`)
/// or RESP3 (`{stream: entries}`) form; nil (timeout) gives none. Parsed by hand so that no
/// reply shape can leave delivered entries unread (they would wait for the visibility
/// timeout).
fn read_entries(reply: RedisValue) -> Vec<(String, String)> {
    let streams: Vec<RedisValue> = match reply {
        RedisValue::Map(map) => map.inner().into_values().collect(),
        RedisValue::Array(streams) => streams
            .into_iter()
            .filter_map(|s| s.into_array().into_iter().nth(1))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        for entry in entries.into_array() {
            let parts = entry.into_array();
            if let Some(id) = parts.first().and_then(value_text) {
                let raw = parts
                    .get(1)
                    .and_then(|f| field(f, "task"))
                    .unwrap_or_default();
                out.push((id, raw));
            }
        }
    }
    out
}

impl RedisQueue {
    /// Connects (failing when Redis does not answer within a few seconds); the client then
    /// reconnects by itself whenever the connection drops.
    pub async fn connect(
        url: &str,
        prefix: &str,
        consumer: &str,
        visibility: Duration,
    ) -> Result<RedisQueue, BrokerError> {
        let client = crate::daemon::redis::connected(url, Duration::from_secs(5)).await?;
        Ok(RedisQueue {
            client,
            reader: tokio::sync::OnceCell::new(),
            keys: Keys::new(prefix),
            consumer: consumer.to_string(),
            visibility,
            last_reclaim: Mutex::new(None),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn reader(&self) -> Result<&Client, BrokerError> {
        self.reader
            .get_or_try_init(|| async {
                let reader = self.client.clone_new();
                crate::daemon::redis::connect(&reader).await?;
                Ok::<_, BrokerError>(reader)
            })
            .await
    }

    async fn ensure_group(&self) -> Result<(), BrokerError> {
        // From the start of the stream: tasks queued before the first worker ever ran count.
        let created: Result<RedisValue, RedisError> = self
            .client
            .xgroup_create(
                self.keys.stream.as_str(),
                GROUP,
                XID::Manual("0".into()),
                true,
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a script over the stream as this consumer of the group: its arguments are the
    /// group, the consumer, then `args`.
    async fn run_as_consumer<R: fred::types::FromValue>(
        &self,
        script: &Script,
        args: [String; 2],
    ) -> Result<R, RedisError> {
        let mut all = vec![GROUP.to_string(), self.consumer.clone()];
        all.extend(args);
        script
            .run(&self.client, vec![self.keys.stream.clone()], all)
            .await
    }

    fn reclaim_due(&self) -> bool {
        let mut last = self.last_reclaim.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= RECLAIM_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    async fn reclaim(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let reply: RedisValue = self
            .run_as_consumer(
                &SCRIPT_RECLAIM,
                [self.visibility.as_millis().to_string(), max.to_string()],
            )
            .await?;
        let mut out = Vec::new();
        for item in reply.into_array() {
            let parts = item.into_array();
            let (Some(id), Some(fields)) = (parts.first().and_then(value_text), parts.get(1))
            else {
                continue;
            };
            let deliveries = parts
                .get(2)
                .and_then(|n| n.as_i64())
                .map_or(1, |n| n.max(1) as u64);
            let raw = field(fields, "task").unwrap_or_default();
            tracing::info!(entry = %id, deliveries, "reclaimed a task its worker did not finish");
            out.push(Delivery::new(id, raw, deliveries));
        }
        Ok(out)
    }

    async fn touch(&self, d: &Delivery, idle: Duration) -> Result<bool, BrokerError> {
        let n: i64 = self
            .run_as_consumer(
                &SCRIPT_TOUCH,
                [d.receipt.clone(), idle.as_millis().to_string()],
            )
            .await?;
        // An entry nobody holds any more is not another worker's: a run keeps it (the
        // worker checks for a finished result before it stores its own).
        Ok(n != 0)
    }
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    fn describe(&self) -> String {
        format!("Redis stream {}", self.keys.stream)
    }

    async fn register(&self) -> Result<(), BrokerError> {
        self.ensure_group().await?;
        let _: RedisValue = self
            .client
            .xgroup_createconsumer(self.keys.stream.as_str(), GROUP, self.consumer.as_str())
            .await?;
        self.reader().await?;
        Ok(())
    }

    async fn push(&self, msg: &Message) -> Result<(), BrokerError> {
        let _: RedisValue = self
            .client
            .xadd(
                self.keys.stream.as_str(),
                false,
                None,
                XID::Auto,
                vec![("task", msg.to_json())],
            )
            .await?;
        Ok(())
    }

    async fn push_tick(&self, msg: &Message, tick: &Tick<'_>) -> Result<TickOutcome, BrokerError> {
        let guard = format!(
            "{}:{}:{}",
            self.keys.tick_prefix,
            tick.entry,
            tick.at.timestamp()
        );
        let n: i64 = SCRIPT_TICK
            .run(
                &self.client,
                vec![self.keys.leader.clone(), guard, self.keys.stream.clone()],
                vec![
                    tick.lease.to_string(),
                    tick.guard_ttl.as_millis().max(1).to_string(),
                    msg.to_json(),
                ],
            )
            .await?;
        Ok(match n {
            1 => TickOutcome::Enqueued,
            0 => TickOutcome::AlreadyEnqueued,
            _ => TickOutcome::NotLeader,
        })
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.reclaim_due() {
            match self.reclaim(max).await {
                Ok(claimed) if !claimed.is_empty() => return Ok(claimed),
                Ok(_) => {}
                Err(BrokerError::Redis(e)) if is_nogroup(&e) => self.ensure_group().await?,
                Err(e) => return Err(e),
            }
        }
        let reader = self.reader().await?;
        let options = Options {
            timeout: Some(wait + Duration::from_secs(5)),
            ..Default::default()
        };
        let reply: Result<RedisValue, RedisError> = reader
            .with_options(&options)
            .xreadgroup(
                GROUP,
                self.consumer.as_str(),
                Some(max as u64),
                Some(wait.as_millis() as u64),
                false,
                self.keys.stream.as_str(),
                XID::NewInGroup,
            )
            .await;
        match reply {
            Ok(reply) => Ok(read_entries(reply)
                .into_iter()
                .map(|(id, raw)| Delivery::new(id, raw, 1))
                .collect()),
            // Redis lost the group (restarted without persistence): make it again.
            Err(e) if is_nogroup(&e) => {
                self.register().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn extend(&self, d: &Delivery) -> Result<bool, BrokerError> {
        self.touch(d, Duration::ZERO).await
    }

    async fn ack(&self, d: &Delivery) -> Result<(), BrokerError> {
        let _: RedisValue = self
            .client
            .xack(self.keys.stream.as_str(), GROUP, d.receipt.as_str())
            .await?;
        Ok(())
    }

    async fn retry_later(
        &self,
        d: &Delivery,
        next: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let _: RedisValue = SCRIPT_RETRY
            .run(
                &self.client,
                vec![self.keys.stream.clone(), self.keys.delayed.clone()],
                vec![
                    GROUP.to_string(),
                    d.receipt.clone(),
                    delay.as_millis().to_string(),
                    next.to_json(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let _: RedisValue = SCRIPT_DEAD
            .run(
                &self.client,
                vec![self.keys.stream.clone(), self.keys.dead.clone()],
                vec![
                    GROUP.to_string(),
                    d.receipt.clone(),
                    DEAD_LETTER_CAP.to_string(),
                    "task".into(),
                    d.raw.clone(),
                    "reason".into(),
                    reason.to_string(),
                    "failed_at".into(),
                    Utc::now().to_rfc3339(),
                    "worker".into(),
                    self.consumer.clone(),
                    "deliveries".into(),
                    d.deliveries.to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn release(&self, d: &Delivery) -> Result<(), BrokerError> {
        self.touch(d, self.visibility).await.map(|_| ())
    }

    async fn task_ids(&self) -> Result<Option<std::collections::HashSet<String>>, BrokerError> {
        let id_of = |raw: &str| Message::from_json(raw).ok().map(|m| m.id);
        let mut ids = std::collections::HashSet::new();
        let mut start = "-".to_string();
        loop {
            let page: Vec<(String, std::collections::HashMap<String, String>)> = self
                .client
                .xrange(self.keys.stream.as_str(), start.as_str(), "+", Some(1000))
                .await?;
            let Some((last, _)) = page.last() else { break };
            start = format!("({last}");
            let full = page.len() == 1000;
            ids.extend(
                page.iter()
                    .filter_map(|(_, f)| f.get("task").and_then(|t| id_of(t))),
            );
            if !full {
                break;
            }
        }
        let delayed: Vec<String> = fred::interfaces::SortedSetsInterface::zrange(
            &self.client,
            self.keys.delayed.as_str(),
            0,
            -1,
            None,
            false,
            None,
            false,
        )
        .await?;
        ids.extend(delayed.iter().filter_map(|raw| id_of(raw)));
        Ok(Some(ids))
    }

    async fn housekeeping(&self) -> Result<QueueStats, BrokerError> {
        let _: i64 = SCRIPT_PROMOTE
            .run(
                &self.client,
                vec![self.keys.delayed.clone(), self.keys.stream.clone()],
                vec![PROMOTE_BATCH.to_string()],
            )
            .await?;
        let reply: Vec<i64> = SCRIPT_TRIM
            .run(
                &self.client,
                vec![self.keys.stream.clone(), self.keys.delayed.clone()],
                vec![GROUP.to_string(), FORGET_CONSUMER_MS.to_string()],
            )
            .await?;
        let n = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(QueueStats {
            ready: n(0),
            unacked: n(1),
            delayed: n(2),
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let reply: RedisValue = self
            .client
            .xrevrange(self.keys.dead.as_str(), "+", "-", Some(limit as u64))
            .await?;
        let mut out = Vec::new();
        for entry in reply.into_array() {
            let parts = entry.into_array();
            let (Some(id), Some(fields)) = (parts.first().and_then(value_text), parts.get(1))
            else {
                continue;
            };
            out.push(DeadLetter {
                id,
                failed_at: field(fields, "failed_at")
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                raw: field(fields, "task").unwrap_or_default(),
                reason: field(fields, "reason").unwrap_or_default(),
                worker: field(fields, "worker").unwrap_or_default(),
                deliveries: field(fields, "deliveries")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        Ok(SCRIPT_LEASE_ACQUIRE
            .run(
                &self.client,
                vec![self.keys.leader.clone(), self.keys.epoch.clone()],
                vec![holder.to_string(), ttl.as_millis().to_string()],
            )
            .await?)
    }

    async fn renew_lease(&self, token: &str, ttl: Duration) -> Result<bool, BrokerError> {
        let n: i64 = SCRIPT_LEASE_RENEW
            .run(
                &self.client,
                vec![self.keys.leader.clone()],
                vec![token.to_string(), ttl.as_millis().to_string()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn release_lease(&self, token: &str) -> Result<(), BrokerError> {
        let _: i64 = SCRIPT_LEASE_RELEASE
            .run(
                &self.client,
                vec![self.keys.leader.clone()],
                vec![token.to_string()],
            )
            .await?;
        Ok(())
    }

    async fn retire(&self) {
        // A consumer that still holds entries keeps them claimable by name; only an empty
        // one is removed (deleting a consumer drops its pending entries).
        let pending: Result<RedisValue, RedisError> = self
            .client
            .xpending(
                self.keys.stream.as_str(),
                GROUP,
                ("-", "+", 1, self.consumer.as_str()),
            )
            .await;
        if let Ok(RedisValue::Array(items)) = pending
            && items.is_empty()
        {
            let _: Result<RedisValue, RedisError> = self
                .client
                .xgroup_delconsumer(self.keys.stream.as_str(), GROUP, self.consumer.as_str())
                .await;
        }
        // The command connection stays: beat may share this queue and still release its
        // lease; it closes with the process.
        if let Some(reader) = self.reader.get() {
            let _ = reader.quit().await;
        }
    }
}

/// Logs a repeating failure once, then at most once a minute with a count.
pub(crate) struct QuietWarnings {
    state: Mutex<(Option<Instant>, u64)>,
}

impl QuietWarnings {
    pub(crate) const fn new() -> QuietWarnings {
        QuietWarnings {
            state: Mutex::new((None, 0)),
        }
    }

    pub(crate) fn warn(&self, what: &str, err: &dyn std::fmt::Display) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *s;
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            *suppressed += 1;
            return;
        }
        let also = if *suppressed > 0 {
            format!(" ({suppressed} more since the last warning)")
        } else {
            String::new()
        };
        tracing::warn!("{what}: {err}{also}");
        *last = Some(Instant::now());
        *suppressed = 0;
    }

    /// The failure is over: the next one is logged at once.
    pub(crate) fn recovered(&self, what: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0.is_some() {
            tracing::info!("{what}: working again");
        }
        *s = (None, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_old_fields_default() {
        let mut m = Message::new(
            "apps.allocations.tasks.limits.update_limits_for_cluster",
            vec!["gpu".into()],
        );
        m.attempt = 2;
        assert_eq!(Message::from_json(&m.to_json()), Ok(m.clone()));
        let minimal = Message::from_json(r#"{"id":"x","task":"t"}"#).expect("minimal");
        assert_eq!(minimal.attempt, 0);
        assert!(minimal.args.is_empty());
        assert!(Message::from_json("not json").is_err());
    }

    #[test]
    fn stream_replies_are_read_in_every_shape() {
        let entry = |id: &str, task: &str| {
            RedisValue::Array(vec![
                id.into(),
                RedisValue::Array(vec!["task".into(), task.into()]),
            ])
        };
        // One entry with one field: the shape a generic conversion got wrong.
        let one = RedisValue::Array(vec![RedisValue::Array(vec![
            "p:tasks".into(),
            RedisValue::Array(vec![entry("1-0", "{}")]),
        ])]);
        assert_eq!(read_entries(one), vec![("1-0".into(), "{}".into())]);
        let two = RedisValue::Array(vec![RedisValue::Array(vec![
            "p:tasks".into(),
            RedisValue::Array(vec![entry("1-0", "a"), entry("2-0", "b")]),
        ])]);
        assert_eq!(read_entries(two).len(), 2);
        assert!(read_entries(RedisValue::Null).is_empty());
        // An entry without fields (deleted meanwhile) still yields its id, to be acked.
        let bare = RedisValue::Array(vec![RedisValue::Array(vec![
            "p:tasks".into(),
            RedisValue::Array(vec![RedisValue::Array(vec![
                "3-0".into(),
                RedisValue::Null,
            ])]),
        ])]);
        assert_eq!(read_entries(bare), vec![("3-0".into(), String::new())]);
    }

    #[tokio::test]
    async fn local_queue_hands_out_at_most_the_free_slots_and_delays_retries() {
        let q = LocalQueue::new();
        for i in 0..3 {
            q.push(&Message::new("t", vec![i.into()]))
                .await
                .expect("push");
        }
        let first = q.fetch(2, Duration::from_millis(10)).await.expect("fetch");
        assert_eq!(first.len(), 2);
        let stats = q.housekeeping().await.expect("stats");
        assert_eq!((stats.ready, stats.unacked), (1, 2));
        let retry = first[0].message.clone().expect("message");
        q.retry_later(&first[0], &retry, Duration::from_millis(150))
            .await
            .expect("retry");
        q.ack(&first[1]).await.expect("ack");
        let next = q.fetch(5, Duration::from_millis(10)).await.expect("fetch");
        assert_eq!(next.len(), 1, "the retry is not due yet");
        let later = q.fetch(5, Duration::from_secs(2)).await.expect("fetch");
        assert_eq!(later.len(), 1, "the retry came back after its delay");
        assert_eq!(later[0].message.as_ref().map(|m| &m.id), Ok(&retry.id));
        q.dead_letter(&later[0], "gave up").await.expect("dead");
        let dead = q.dead_letters(10).await.expect("dead letters");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "gave up");
    }
}
