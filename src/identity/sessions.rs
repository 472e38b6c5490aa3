//! Sessions: revocation (logout) and a per-process cache of resolved sessions.
//!
//! The database is the record every web process shares, and it alone decides whether a
//! session was revoked or its user may still act: a lookup that any other store could forget
//! (Redis flushed, evicted or restarted without persistence) would bring a logged-out session
//! back to life. Entries are dropped once the session they name has expired.
//!
//! To spare the two database lookups per request (revocation, then the user row), a web
//! process with Redis keeps the sessions it resolved in memory. That cache is trusted only
//! while the process demonstrably hears every invalidation:
//!
//! - every change that can end or alter a session (logout, login, any write to a user,
//!   a committed `/batch/`, the LDAP sync, `keystone user …`) calls [`Sessions::invalidate`]
//!   after its commit; it drops the matching entries here and publishes the invalidation on
//!   a Redis channel that every web process subscribes to;
//! - each web process publishes a numbered ping on that channel every [`HEARTBEAT`] and uses
//!   its cache only while its own latest ping came back less than [`LIVENESS`] ago. Redis
//!   delivers a channel's messages in order, so a ping that came back vouches for every
//!   invalidation published before it. A missed ping, a reconnect or a lagging reader empties
//!   the cache;
//! - [`Sessions::invalidate`] returns only once every web process has acknowledged the
//!   invalidation or, failing that (a process cut off from Redis, Redis down), once
//!   [`LIVENESS`] has passed, after which a process that did not hear it no longer trusts
//!   its cache. So nothing revoked is accepted anywhere once the revoking response is sent.
//!
//! Without Redis there is no cache: each request reads the database, as before.

use crate::store::users::{self, User};
use crate::store::{Db, DbError};
use chrono::{DateTime, Utc};
use fred::prelude::{
    Client, ClientLike, Error as RedisError, EventInterface, PubsubInterface, SortedSetsInterface,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a web process pings itself through the channel.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long a returned ping vouches for the cache; also the longest an invalidation waits.
pub const LIVENESS: Duration = Duration::from_millis(600);
/// How long an entry is used before the database is asked again, whatever was heard:
/// bounds what a write outside Keystone (SQL by hand) can leave stale.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// Entries held at most; beyond it the oldest half is dropped.
const MAX_ENTRIES: usize = 20_000;

/// What an invalidation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every session of one user (a write to the user, a login, a password change).
    User(i64),
    /// One session (logout).
    Session(String),
    /// Everything (a committed batch, a sync that touched many users).
    All,
}

impl Target {
    fn encode(&self) -> String {
        match self {
            Target::User(id) => format!("u {id}"),
            Target::Session(jti) => format!("s {jti}"),
            Target::All => "*".into(),
        }
    }

    fn decode(text: &str) -> Option<Target> {
        match text.split_once(' ') {
            Some(("u", id)) => id.parse().ok().map(Target::User),
            Some(("s", jti)) if !jti.is_empty() => Some(Target::Session(jti.to_string())),
            None if text == "*" => Some(Target::All),
            _ => None,
        }
    }
}

struct Entry {
    user: User,
    /// Fingerprint of the user's password hash, as sessions carry it.
    fingerprint: String,
    checked: Instant,
}

/// Resolved sessions of this process, keyed by session id.
pub struct Cache {
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped by every invalidation: a lookup that began before one does not fill the cache.
    generation: AtomicU64,
    /// Until when the last returned ping vouches for the cache (None: not trusted).
    trusted_until: Mutex<Option<Instant>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new()
    }
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            trusted_until: Mutex::new(None),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trusted_at(&self, now: Instant) -> bool {
        let until = *self.trusted_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| now < t)
    }

    /// A ping sent at `sent` came back: the cache is trusted until `sent + LIVENESS`. When
    /// it was not trusted any more (pings lost or late), it is emptied first.
    fn vouch(&self, sent: Instant, now: Instant) {
        let mut until = self.trusted_until.lock().unwrap_or_else(|e| e.into_inner());
        if !until.is_some_and(|t| now < t) {
            self.clear();
        }
        *until = Some(until.map_or(sent + LIVENESS, |t| t.max(sent + LIVENESS)));
    }

    /// Stops trusting the cache and empties it (reconnect, lost messages).
    fn distrust(&self) {
        *self.trusted_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.clear();
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries().clear();
    }

    /// Drops what `target` covers.
    pub fn apply(&self, target: &Target) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut entries = self.entries();
        match target {
            Target::User(id) => entries.retain(|_, e| e.user.id != *id),
            Target::Session(jti) => {
                entries.remove(jti);
            }
            Target::All => entries.clear(),
        }
    }

    fn get(&self, jti: &str, user_id: i64, fingerprint: &str, now: Instant) -> Option<User> {
        if !self.trusted_at(now) {
            return None;
        }
        let entries = self.entries();
        let e = entries.get(jti)?;
        (e.user.id == user_id
            && e.fingerprint == fingerprint
            && now.duration_since(e.checked) < MAX_AGE)
            .then(|| e.user.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Stores a lookup that began at `generation`, unless an invalidation came since.
    fn put(&self, generation: u64, jti: &str, user: &User, fingerprint: &str, checked: Instant) {
        let mut entries = self.entries();
        if self.generation() != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = entries.values().map(|e| e.checked).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            entries.retain(|_, e| e.checked > cut);
        }
        entries.insert(
            jti.to_string(),
            Entry {
                user: user.clone(),
                fingerprint: fingerprint.to_string(),
                checked,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

/// The Redis channel that carries invalidations, pings and acknowledgements.
pub struct Bus {
    client: Client,
    channel: String,
    members: String,
    me: String,
    /// Acknowledgements counted so far, by invalidation id (web role only).
    acks: Mutex<HashMap<String, Arc<(AtomicU64, tokio::sync::Notify)>>>,
    /// Set once this process listens (the web role): only then can it count acknowledgements.
    listening: AtomicBool,
}

impl Bus {
    /// Connects to Redis; `me` names this process among the listeners.
    pub async fn connect(url: &str, prefix: &str, me: &str) -> Result<Bus, RedisError> {
        let client = crate::daemon::redis::connected(url, LIVENESS).await?;
        Ok(Bus {
            client,
            channel: format!("{prefix}:sessions"),
            members: format!("{prefix}:sessions:listeners"),
            me: me.to_string(),
            acks: Mutex::default(),
            listening: AtomicBool::new(false),
        })
    }

    /// Publishes `target` and waits until every listener acknowledged it or [`LIVENESS`]
    /// passed. Never fails: when Redis does not answer, waiting out [`LIVENESS`] is enough.
    async fn invalidate(&self, target: &Target) {
        let started = Instant::now();
        let deadline = started + LIVENESS;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let counter = Arc::new((AtomicU64::new(0), tokio::sync::Notify::new()));
        let listening = self.listening.load(Ordering::SeqCst);
        if listening {
            self.acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), counter.clone());
        }
        let since = now_ms() - 2.0 * LIVENESS.as_millis() as f64;
        let message = format!("inv {id} {}", target.encode());
        let sent = tokio::time::timeout_at(deadline.into(), async {
            let listeners: Result<u64, RedisError> =
                self.client.zcount(&self.members, since, f64::MAX).await;
            let receivers: Result<u64, RedisError> =
                self.client.publish(&self.channel, message).await;
            (listeners, receivers)
        })
        .await;
        match sent {
            // Every known listener heard it: wait for each to have applied it.
            Ok((Ok(known), Ok(heard))) if listening && heard >= known => {
                while counter.0.load(Ordering::SeqCst) < heard {
                    let notified = counter.1.notified();
                    if counter.0.load(Ordering::SeqCst) >= heard {
                        break;
                    }
                    if tokio::time::timeout_at(deadline.into(), notified)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            // Not every listener heard it (one cut off, or Redis down), or this process
            // cannot count acknowledgements: wait until no listener trusts an old cache.
            _ => tokio::time::sleep_until(deadline.into()).await,
        }
        if listening {
            self.acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        tracing::debug!(
            "sessions: invalidated {target:?} in {} ms",
            started.elapsed().as_millis()
        );
    }

    /// Subscribes this process (a web role) to the channel with `cache`, and keeps pinging
    /// and listening in the background for as long as the process runs.
    pub async fn listen(self: &Arc<Self>, cache: Arc<Cache>) -> Result<(), RedisError> {
        let subscriber = self.client.clone_new();
        crate::daemon::redis::connect(&subscriber).await?;
        self.listening.store(true, Ordering::SeqCst);
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        subscriber.subscribe(self.channel.as_str()).await?;
        let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let last_seen = Arc::new(AtomicU64::new(0));

        // Listener: applies invalidations, counts acknowledgements, takes back pings.
        let bus = self.clone();
        let (cache_l, sent_l, last_l) = (cache.clone(), sent.clone(), last_seen.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = messages.recv() => match message {
                        Ok(m) => {
                            let text = m.value.as_str().map(|s| s.to_string()).unwrap_or_default();
                            bus.on_message(&text, &cache_l, &sent_l, &last_l);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cache_l.distrust(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            cache_l.distrust();
                            return;
                        }
                    },
                    reconnected = reconnects.recv() => {
                        cache_l.distrust();
                        if reconnected.is_err() {
                            return;
                        }
                        if let Err(e) = subscriber.subscribe(bus.channel.as_str()).await {
                            tracing::warn!("sessions: could not subscribe again after a reconnect: {e}");
                        }
                    }
                }
            }
        });

        // Heartbeat: a numbered ping, and this process's place among the listeners.
        let bus = self.clone();
        tokio::spawn(async move {
            let mut seq: u64 = 0;
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                seq += 1;
                {
                    let mut s = sent.lock().unwrap_or_else(|e| e.into_inner());
                    s.insert(seq, Instant::now());
                    s.retain(|k, _| *k + 64 > seq);
                }
                let now = now_ms();
                let _: Result<(), _> = bus
                    .client
                    .zadd(
                        &bus.members,
                        None,
                        None,
                        false,
                        false,
                        (now, bus.me.as_str()),
                    )
                    .await;
                let _: Result<(), _> = bus
                    .client
                    .zremrangebyscore(&bus.members, f64::MIN, now - 60_000.0)
                    .await;
                let _: Result<(), _> = bus
                    .client
                    .publish(&bus.channel, format!("ping {} {seq}", bus.me))
                    .await;
            }
        });
        Ok(())
    }

    fn on_message(
        self: &Arc<Self>,
        text: &str,
        cache: &Cache,
        sent: &Mutex<HashMap<u64, Instant>>,
        last_seen: &AtomicU64,
    ) {
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("inv"), Some(id), Some(target)) => {
                match Target::decode(target) {
                    Some(t) => cache.apply(&t),
                    None => cache.distrust(),
                }
                let bus = self.clone();
                let ack = format!("ack {id}");
                tokio::spawn(async move {
                    let _: Result<(), _> = bus.client.publish(&bus.channel, ack).await;
                });
            }
            (Some("ack"), Some(id), None) => {
                let waiter = self
                    .acks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(id)
                    .cloned();
                if let Some(w) = waiter {
                    w.0.fetch_add(1, Ordering::SeqCst);
                    w.1.notify_waiters();
                }
            }
            (Some("ping"), Some(who), Some(seq)) if who == self.me => {
                let Ok(seq) = seq.parse::<u64>() else { return };
                // A ping overtaken (or one lost) means messages may be missing: start over.
                if last_seen.swap(seq, Ordering::SeqCst) + 1 != seq {
                    cache.distrust();
                }
                let at = sent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&seq)
                    .copied();
                if let Some(at) = at {
                    cache.vouch(at, Instant::now());
                }
            }
            _ => {}
        }
    }
}

/// Invalidates `target` from a process that keeps no cache (the worker, a command): through
/// its own short connection when Redis is configured; without Redis no web process caches.
pub async fn invalidate_with(config: &crate::config::Config, target: Target) {
    let Some(url) = config.redis_url() else {
        return;
    };
    match Bus::connect(
        &url,
        &config.settings.redis.prefix,
        &crate::daemon::node_id(),
    )
    .await
    {
        Ok(bus) => {
            bus.invalidate(&target).await;
            let _ = bus.client.quit().await;
        }
        Err(e) => {
            // Web processes that hear nothing stop trusting their cache within LIVENESS
            // only if Redis is gone for them too; entries live MAX_AGE at most otherwise.
            tracing::warn!("sessions: could not reach Redis to invalidate {target:?}: {e}");
            tokio::time::sleep(LIVENESS).await;
        }
    }
}

fn now_ms() -> f64 {
    Utc::now().timestamp_millis() as f64
}

/// Session lookups and revocations of a process.
pub struct Sessions {
    db: Db,
    cache: Option<Arc<Cache>>,
    bus: Option<Arc<Bus>>,
    /// A `/batch/` copy: its writes are not committed yet, so its invalidations wait here
    /// until the batch has kept its steps ([`Sessions::take_deferred`]).
    deferred: Option<Mutex<Vec<Target>>>,
}

impl Sessions {
    /// Lookups straight from the database (no Redis, so no web process caches).
    pub fn new(db: Db) -> Sessions {
        Sessions {
            db,
            cache: None,
            bus: None,
            deferred: None,
        }
    }

    /// With a cache that `bus` keeps honest (the web role with Redis).
    pub fn cached(db: Db, bus: Arc<Bus>, cache: Arc<Cache>) -> Sessions {
        Sessions {
            db,
            cache: Some(cache),
            bus: Some(bus),
            deferred: None,
        }
    }

    /// The same sessions, writing through `db` (a batch's transaction) and holding their
    /// invalidations until the batch is kept.
    pub fn on(&self, db: Db) -> Sessions {
        Sessions {
            db,
            cache: None,
            bus: None,
            deferred: Some(Mutex::default()),
        }
    }

    /// The invalidations a batch copy held back, for the batch to make once it is kept.
    pub fn take_deferred(&self) -> Vec<Target> {
        self.deferred
            .as_ref()
            .map(|d| std::mem::take(&mut *d.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Records a logout, then invalidates the session everywhere.
    pub async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), DbError> {
        users::revoke_session(&self.db, jti, expires_at).await?;
        self.invalidate(Target::Session(jti.to_string())).await;
        Ok(())
    }

    /// Call after committing a change that `target` covers; returns once no web process can
    /// still accept what the change ended.
    pub async fn invalidate(&self, target: Target) {
        if let Some(held) = &self.deferred {
            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
            if !held.contains(&target) {
                held.push(target);
            }
            return;
        }
        if let Some(cache) = &self.cache {
            cache.apply(&target);
        }
        if let Some(bus) = &self.bus {
            bus.invalidate(&target).await;
        }
    }

    /// The active user a valid session token names, unless it was revoked or the password
    /// changed since: from the cache when it is trusted, else from the database.
    pub async fn user(&self, claims: &super::auth::SessionClaims) -> Result<Option<User>, DbError> {
        let now = Instant::now();
        if let Some(cache) = &self.cache
            && let Some(user) = cache.get(&claims.jti, claims.sub, &claims.pwd, now)
        {
            return Ok(Some(user));
        }
        let generation = self.cache.as_ref().map(|c| c.generation());
        if users::session_revoked(&self.db, &claims.jti).await? {
            return Ok(None);
        }
        let Some(user) = users::by_id(&self.db, claims.sub).await? else {
            return Ok(None);
        };
        let fingerprint = super::auth::password_fingerprint(&user.password);
        if !user.is_active || fingerprint != claims.pwd {
            return Ok(None);
        }
        if let (Some(cache), Some(generation)) = (&self.cache, generation) {
            cache.put(generation, &claims.jti, &user, &fingerprint, now);
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64) -> User {
        let mut u = User::new(&format!("u{id}"));
        u.id = id;
        u
    }

    fn trusted() -> (Cache, Instant) {
        let cache = Cache::new();
        let now = Instant::now();
        cache.vouch(now, now);
        (cache, now)
    }

    #[test]
    fn targets_survive_the_channel() {
        for t in [
            Target::User(42),
            Target::Session("abcDEF123".into()),
            Target::All,
        ] {
            assert_eq!(Target::decode(&t.encode()), Some(t));
        }
        assert_eq!(Target::decode("u x"), None);
        assert_eq!(Target::decode("s "), None);
        assert_eq!(Target::decode("?"), None);
    }

    #[test]
    fn an_untrusted_cache_answers_nothing() {
        let cache = Cache::new();
        let now = Instant::now();
        cache.put(cache.generation(), "j", &user(1), "f", now);
        assert!(cache.get("j", 1, "f", now).is_none(), "never vouched for");
        cache.vouch(now, now);
        assert!(
            cache.get("j", 1, "f", now).is_none(),
            "emptied when first trusted"
        );
        cache.put(cache.generation(), "j", &user(1), "f", now);
        assert_eq!(cache.get("j", 1, "f", now).map(|u| u.id), Some(1));
        assert!(
            cache.get("j", 1, "f", now + LIVENESS).is_none(),
            "no ping came back within LIVENESS"
        );
    }

    #[test]
    fn entries_must_match_the_token_and_expire() {
        let (cache, now) = trusted();
        cache.put(cache.generation(), "j", &user(1), "f", now);
        assert!(cache.get("j", 2, "f", now).is_none(), "other user id");
        assert!(cache.get("j", 1, "g", now).is_none(), "password changed");
        assert!(cache.get("k", 1, "f", now).is_none(), "other session");
        cache.vouch(now + MAX_AGE, now + MAX_AGE);
        assert!(cache.get("j", 1, "f", now + MAX_AGE).is_none(), "too old");
    }

    #[test]
    fn invalidations_drop_what_they_cover() {
        let (cache, now) = trusted();
        let g = cache.generation();
        cache.put(g, "a", &user(1), "f", now);
        cache.put(g, "b", &user(1), "f", now);
        cache.put(g, "c", &user(2), "f", now);
        cache.apply(&Target::Session("a".into()));
        assert!(cache.get("a", 1, "f", now).is_none());
        assert!(cache.get("b", 1, "f", now).is_some());
        cache.apply(&Target::User(1));
        assert!(cache.get("b", 1, "f", now).is_none());
        assert!(cache.get("c", 2, "f", now).is_some());
        cache.apply(&Target::All);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_lookup_overtaken_by_an_invalidation_is_not_cached() {
        let (cache, now) = trusted();
        let before = cache.generation();
        cache.apply(&Target::User(1));
        cache.put(before, "a", &user(1), "f", now);
        assert!(cache.get("a", 1, "f", now).is_none());
    }

    #[test]
    fn distrust_empties_and_the_next_ping_starts_clean() {
        let (cache, now) = trusted();
        cache.put(cache.generation(), "a", &user(1), "f", now);
        cache.distrust();
        assert_eq!(cache.len(), 0);
        assert!(!cache.trusted_at(now));
        cache.vouch(now, now);
        assert!(cache.trusted_at(now));
    }

    #[test]
    fn the_cache_is_bounded() {
        let (cache, now) = trusted();
        for i in 0..(MAX_ENTRIES + 10) {
            let at = now + Duration::from_micros(i as u64);
            cache.put(cache.generation(), &format!("j{i}"), &user(1), "f", at);
        }
        assert!(cache.len() <= MAX_ENTRIES);
        let last = format!("j{}", MAX_ENTRIES + 9);
        assert!(
            cache
                .get(&last, 1, "f", now + Duration::from_millis(1))
                .is_some()
        );
    }
}
