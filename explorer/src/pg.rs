//! The explorer's state in PostgreSQL (`explorer serve --database URL`),
//! shared by any number of replicas: the schema is in `migrations/` (run at
//! start and by `explorer migrate`), queries are sqlx runtime queries over
//! a connection pool.
//!
//! How the promises of [`Storage`] hold across replicas:
//! - numbers come from the `reservation_number` sequence, and one node's
//!   numbers become visible in order: the insert (the migrations'
//!   `explorer_insert_reservations`, for a batch or one row, which locks
//!   every node of the batch in one order; the single-row
//!   `explorer_insert_reservation` of older replicas takes the same lock)
//!   holds a per-node advisory lock from taking its number to its commit.
//!   Otherwise two posts for one node on two replicas could commit out of
//!   order, a poll could answer the larger number first, and the node's
//!   cursor would then skip the other;
//! - a unique index on `signature` stores a signed reservation once; the
//!   insert looks for the signature first, so a plain re-post burns no
//!   number (only two identical posts racing each other can leave a gap);
//! - a node's timestamp is checked in the `UPDATE`'s (or upsert's) `WHERE`
//!   that writes it, so two replicas cannot both accept an old one;
//! - a write that concerns a node's poll (a new reservation, a deletion)
//!   is followed, once committed, by a `NOTIFY` naming the node, and for a
//!   new reservation carrying it (the channels and payloads are in
//!   [`notice`]). Each replica keeps one listening connection and wakes
//!   its polls of that node ([`Pg::forward_wakeups`]), answering them from
//!   the payload when it can; when that connection is lost, every held
//!   poll looks again once it is back.
//!
//! Group commit: a replica's concurrent POSTs are queued to one writer
//! ([`writer`]), which stores whatever is queued in one statement and one
//! transaction (at most two such statements at once), so a burst of POSTs
//! costs a few commits and round trips instead of one each. A batch the
//! database refuses (one row it will not take) is stored row by row, so
//! only that row's POST fails.
//!
//! Why the NOTIFY is a transaction of its own, committed without waiting
//! for the WAL flush: PostgreSQL serializes the commits of notifying
//! transactions under one lock held until the commit is done, flush
//! included; sent with the insert, each POST would wait for the one before
//! it to reach the disk (no group commit). The write itself still commits
//! durably before its answer; only the wake-up is not durable, and a
//! NOTIFY lost to a crash between the two delays a poll on another replica
//! until its long poll ends (the node then polls again and gets it).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::{join_all, BoxFuture};
use reservation::node::{Capacity, NodeInfo};
use reservation::{Reservation, WorkloadResult};
use serde_json::value::RawValue;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::db::SCHEMA;
use crate::storage::{
    canonical_number, expires_ns, Connections, Insert, NodeUpdate, PollRange, Record, Storage,
    Wakers,
};
use crate::ExplorerError;

mod notice;

pub(crate) use notice::WAKE_CHANNEL;
use notice::{Heard, Notice, Reader, WROTE_CHANNEL};

/// The schema's migrations, compiled in (version, description, SQL).
const MIGRATIONS: [(i64, &str, &str); 3] = [
    (
        1,
        "explorer",
        include_str!("../migrations/0001_explorer.sql"),
    ),
    (
        2,
        "insert batch",
        include_str!("../migrations/0002_insert_batch.sql"),
    ),
    (
        3,
        "insert after",
        include_str!("../migrations/0003_insert_after.sql"),
    ),
];

/// The migrations above as sqlx's migration source.
#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The columns a [`Reservation`] is read back from.
const COLUMNS: &str = "number, version, node_id, user_id, kind, data, created, duration, \
                       nonce, signature, to_delete, delete_signature";

pub(crate) struct Pg {
    pool: PgPool,
    /// host:port/database, for logs and errors (never the password).
    at: String,
    /// Wake-ups to NOTIFY, sent by [`notifier`] in batches.
    wake_tx: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// Reservations to store, by [`writer`] in batches; bounded (see
    /// [`Storage::create`]).
    insert_tx: tokio::sync::mpsc::Sender<Queued>,
    /// That bound, for the busy answer.
    max_queued: usize,
    /// Batch statements run, and the rows they stored or found stored.
    batches: Arc<BatchCounts>,
    /// The backend process id of [`notifier`]'s connection (0: none).
    own_pid: Arc<AtomicU32>,
    /// This replica's held polls (from [`Storage::forward_wakeups`]), for
    /// the writes whose POST went away before the server could wake them.
    local: Arc<OnceLock<Arc<Wakers>>>,
}

/// What [`writer`] did, for `/metrics`.
#[derive(Default)]
struct BatchCounts {
    statements: AtomicU64,
    rows: AtomicU64,
}

/// One reservation waiting for [`writer`], and where its answer goes.
struct Queued {
    r: Reservation,
    expires_ns: i64,
    answer: oneshot::Sender<Stored>,
}

/// The reservation back, with what [`insert_rows`] says of it.
type Stored = (Reservation, Result<Saved, ExplorerError>);

/// A reservation's number, whether it is new (else the number is the
/// stored duplicate's), and for a new one the highest number its node had
/// before it (0: none; see migration 0003).
type Saved = (i64, bool, Option<u64>);

/// At most this many reservations in one statement.
const MAX_BATCH: usize = 256;
/// At most this many batch statements of one replica at once: the next
/// batch gathers while one commits.
const BATCHES_IN_FLIGHT: usize = 2;
/// [`writer`] keeps its connections between batches only in a pool of
/// more than this many (the listener's, the notifier's, the batches', and
/// at least one for every other query).
const KEEP_FROM_POOL: u32 = 2 + BATCHES_IN_FLIGHT as u32;
/// How long [`writer`] keeps them without a batch to store.
const WRITER_IDLE: Duration = Duration::from_secs(1);

// The default bound of the queue in front of [`writer`] is two full
// batches (`crate::DEFAULT_MAX_QUEUED_POSTS`).
const _: () = assert!(crate::DEFAULT_MAX_QUEUED_POSTS == MAX_BATCH * BATCHES_IN_FLIGHT);

/// What a busy answer's `Retry-After` says, in seconds: a full queue is a
/// few batches, each a commit of milliseconds; a second lets it drain
/// without clients hammering.
const RETRY_AFTER_SECS: u64 = 1;

/// `host:port/database` of `opts`.
fn shown(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    )
}

/// The database `url` names, without its password (for messages).
pub(crate) fn redact(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(o) => shown(&o),
        Err(_) => "the database URL".into(),
    }
}

impl Pg {
    /// Connect a pool of at most `max_connections` (the listener's
    /// included, and above two the notifier's: see [`notifier`]) to `url`
    /// (a PostgreSQL URL, e.g. `postgres://explorer:secret@db:5432/explorer`),
    /// with at most `max_queued` reservations waiting for the writer (at
    /// least 1). Nothing is created: run [`Pg::migrate`].
    pub async fn connect(
        url: &str,
        max_connections: u32,
        max_queued: usize,
    ) -> Result<Pg, ExplorerError> {
        let opts: PgConnectOptions = url.parse().map_err(|e| ExplorerError::Database {
            at: redact(url),
            source: e,
        })?;
        let at = shown(&opts);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            // No ping before each statement (sqlx's default): a dead
            // connection fails its statement, is dropped, and `/health`
            // reports it; a ping doubled every query's round trips.
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(|source| ExplorerError::Database {
                at: at.clone(),
                source,
            })?;
        let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
        let own_pid = Arc::new(AtomicU32::new(0));
        tokio::spawn(notifier(pool.clone(), at.clone(), wake_rx, own_pid.clone()));
        let max_queued = max_queued.max(1);
        let (insert_tx, insert_rx) = tokio::sync::mpsc::channel(max_queued);
        let batches = Arc::new(BatchCounts::default());
        let local = Arc::new(OnceLock::new());
        tokio::spawn(writer(
            Batcher {
                pool: pool.clone(),
                at: at.clone(),
                counts: batches.clone(),
                wake_tx: wake_tx.clone(),
                local: local.clone(),
                kept: Arc::new(std::sync::Mutex::new(Vec::new())),
                keep: max_connections > KEEP_FROM_POOL,
            },
            insert_rx,
        ));
        Ok(Pg {
            pool,
            at,
            wake_tx,
            insert_tx,
            max_queued,
            batches,
            own_pid,
            local,
        })
    }

    fn err(&self, source: sqlx::Error) -> ExplorerError {
        ExplorerError::Database {
            at: self.at.clone(),
            source,
        }
    }

    fn corrupt(&self, key: impl Into<String>, reason: impl ToString) -> ExplorerError {
        ExplorerError::Corrupt {
            path: self.at.clone().into(),
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// Bring the schema up to date (each migration once, under sqlx's
    /// advisory lock, so replicas starting together do not race).
    pub async fn migrate(&self) -> Result<(), ExplorerError> {
        let m = Migrator::new(Embedded)
            .await
            .map_err(|source| ExplorerError::Migrate {
                at: self.at.clone(),
                source,
            })?;
        m.run(&self.pool)
            .await
            .map_err(|source| ExplorerError::Migrate {
                at: self.at.clone(),
                source,
            })?;
        info!(database = %self.at, version = MIGRATIONS.len(), "database schema up to date");
        Ok(())
    }

    fn reservation(&self, row: &PgRow) -> Result<Reservation, ExplorerError> {
        let number: i64 = row.try_get("number").map_err(|e| self.err(e))?;
        let get = |e: sqlx::Error| self.err(e);
        let kind: Vec<u8> = row.try_get("kind").map_err(get)?;
        let data: String = row.try_get("data").map_err(get)?;
        let version: i32 = row.try_get("version").map_err(get)?;
        let id = format!("{number}-1");
        Ok(Reservation {
            version: u32::try_from(version).map_err(|e| self.corrupt(&id, e))?,
            node_id: row.try_get("node_id").map_err(get)?,
            user_id: row.try_get("user_id").map_err(get)?,
            kind: String::from_utf8(kind).map_err(|e| self.corrupt(&id, e))?,
            data: RawValue::from_string(data).map_err(|e| self.corrupt(&id, e))?,
            created: row.try_get("created").map_err(get)?,
            duration: row.try_get("duration").map_err(get)?,
            nonce: row.try_get("nonce").map_err(get)?,
            signature: row.try_get("signature").map_err(get)?,
            to_delete: row.try_get("to_delete").map_err(get)?,
            delete_signature: row.try_get("delete_signature").map_err(get)?,
            id,
        })
    }

    fn node(&self, row: &PgRow) -> Result<NodeInfo, ExplorerError> {
        let get = |e: sqlx::Error| self.err(e);
        let node_id: String = row.try_get("node_id").map_err(get)?;
        let url: Vec<u8> = row.try_get("url").map_err(get)?;
        let capacity: String = row.try_get("capacity").map_err(get)?;
        let used: String = row.try_get("used").map_err(get)?;
        let bad = |e: &dyn ToString| self.corrupt(format!("nodes/{node_id}"), e.to_string());
        Ok(NodeInfo {
            url: String::from_utf8(url).map_err(|e| bad(&e))?,
            capacity: serde_json::from_str(&capacity).map_err(|e| bad(&e))?,
            used: serde_json::from_str(&used).map_err(|e| bad(&e))?,
            draining: row.try_get("draining").map_err(get)?,
            last_heartbeat: row.try_get("last_heartbeat").map_err(get)?,
            node_id,
        })
    }

    /// Wake `node_id`'s polls on every replica, soon: [`notifier`] sends
    /// it, with any others queued meanwhile.
    fn notify(&self, node_id: &str) {
        let _ = self.wake_tx.send(Notice::wake(node_id));
    }

    /// The answer to [`Storage::create`] once `r` went to the database.
    fn inserted(
        &self,
        mut r: Reservation,
        stored: Result<Saved, ExplorerError>,
    ) -> Result<Insert, ExplorerError> {
        // (The writer queued the NOTIFY of a new one.)
        let (number, new, after) = stored?;
        if !new {
            return Ok(Insert::Duplicate(format!("{number}-1")));
        }
        r.id = format!("{number}-1");
        Ok(Insert::New(Box::new(r), after))
    }

    /// The last timestamp accepted for `node_id`: `None` if unknown.
    async fn last_timestamp(&self, node_id: &str) -> Result<Option<Option<i64>>, ExplorerError> {
        let row = sqlx::query("SELECT last_timestamp FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| r.try_get::<Option<i64>, _>(0).map_err(|e| self.err(e)))
            .transpose()
    }
}

/// Sends the NOTIFYs of committed writes: every node id queued by then in
/// one statement, a transaction of its own that does not wait for the WAL
/// flush (see the module doc). Under load many writes share one NOTIFY
/// statement; alone, a write's goes out at once. A failure is logged: the
/// writes are stored, and held polls elsewhere answer at their deadline.
///
/// It sends on a connection of its own whose backend process id it
/// publishes in `own`: PostgreSQL delivers a session's notifications to
/// every listener, this replica's included, and the server has already
/// woken this replica's polls of the node ([`Pg::forward_wakeups`] skips
/// them; waking again would cost each woken node one more poll query).
/// While that connection cannot be had, or the pool is too small to spare
/// it (two connections or fewer: the listener's and one for every query),
/// it sends through the pool, and this replica wakes on its own NOTIFYs
/// too (harmless). When the listener finds its connection lost (the
/// database may have restarted, and its process ids be handed out again)
/// it sets `own` to 0: the next NOTIFY takes a new connection, and
/// publishes its id, rather than trust the old one. A second without a
/// NOTIFY and it gives the connection back (and sets `own` to 0): a quiet
/// replica keeps no process id that may have died meanwhile (killed, or
/// `idle_session_timeout`) and gone to another replica's session.
async fn notifier(
    pool: PgPool,
    at: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    own: Arc<AtomicU32>,
) {
    let dedicated = pool.options().get_max_connections() > 2;
    // The connection and its process id.
    let mut conn: Option<(PoolConnection<Postgres>, u32)> = None;
    loop {
        let first = match conn {
            Some(_) => match tokio::time::timeout(NOTIFIER_IDLE, rx.recv()).await {
                Ok(first) => first,
                Err(_) => {
                    own.store(0, Ordering::SeqCst);
                    conn = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            return;
        };
        let mut notices = vec![first];
        while notices.len() < 1000 {
            match rx.try_recv() {
                Ok(n) => notices.push(n),
                Err(_) => break,
            }
        }
        let (channels, payloads) = notice::statement(&notices);
        if conn
            .as_ref()
            .is_some_and(|(_, pid)| own.load(Ordering::SeqCst) != *pid)
        {
            // The listener lost its connection meanwhile: maybe this one too.
            if let Some((mut c, _)) = conn.take() {
                c.close_on_drop();
            }
        }
        if conn.is_none() && dedicated {
            conn = notifying_connection(&pool, &own).await;
        }
        let statement = || {
            sqlx::query(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify(c, p)::text \
                 FROM unnest($1::text[], $2::text[]) AS t(c, p)",
            )
            .bind(&channels)
            .bind(&payloads)
        };
        let mut sent = match conn.as_mut() {
            Some((c, _)) => statement().execute(&mut **c).await,
            None => statement().execute(&pool).await,
        };
        if sent.is_err() {
            if let Some((mut c, _)) = conn.take() {
                // That connection is broken: once more through the pool.
                own.store(0, Ordering::SeqCst);
                c.close_on_drop();
                sent = statement().execute(&pool).await;
            }
        }
        if let Err(e) = sent {
            warn!(database = %at, wakeups = notices.len(), error = %e, "NOTIFY failed; polls of these nodes held on other replicas answer at their deadline");
        }
    }
}

/// At most one warning this often about unreadable wake-ups (each one of
/// a stream of them would be logged otherwise).
const UNREADABLE_WARN_EVERY: Duration = Duration::from_secs(60);

/// How long [`notifier`] keeps its connection without a NOTIFY to send.
const NOTIFIER_IDLE: Duration = Duration::from_secs(1);

/// A connection for [`notifier`] and its backend process id, also
/// stored in `own`.
async fn notifying_connection(
    pool: &PgPool,
    own: &AtomicU32,
) -> Option<(PoolConnection<Postgres>, u32)> {
    let mut c = pool.acquire().await.ok()?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *c)
        .await
        .ok()?;
    let pid = u32::try_from(pid).ok().filter(|p| *p != 0)?;
    own.store(pid, Ordering::SeqCst);
    Some((c, pid))
}

/// What [`writer`]'s batches need.
#[derive(Clone)]
struct Batcher {
    pool: PgPool,
    at: String,
    counts: Arc<BatchCounts>,
    /// To [`notifier`]: new reservations.
    wake_tx: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// This replica's held polls, once the server handed them over.
    local: Arc<OnceLock<Arc<Wakers>>>,
    /// Connections kept between batch statements (see [`Batcher::take`]).
    kept: Arc<std::sync::Mutex<Vec<PoolConnection<Postgres>>>>,
    /// Whether to keep them: only in a pool larger than [`KEEP_FROM_POOL`].
    keep: bool,
}

impl Batcher {
    /// A connection for a batch statement: one kept from an earlier batch,
    /// else a new one from the pool (`None`: run on the pool).
    ///
    /// Why keep them: the pool hands out its idle connections in turn, so
    /// a replica's batches ran on each of its (by default 16) database
    /// backends in turn, each a process whose caches had gone cold since
    /// its last statement. Kept, at most [`BATCHES_IN_FLIGHT`] backends do
    /// a replica's inserts: +25% submits at 16 concurrent users on a
    /// 2-core machine (bench/notes.md, "Re-run at stop 24").
    async fn take(&self) -> Option<PoolConnection<Postgres>> {
        if !self.keep {
            return None;
        }
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(c) => Some(c),
            None => self.pool.acquire().await.ok(),
        }
    }

    /// Keep `conn` for the next batch, unless its statement failed other
    /// than by a refusal (the connection may be broken: dropped).
    fn give_back<T>(&self, conn: PoolConnection<Postgres>, how: &Result<T, sqlx::Error>) {
        match how {
            Ok(_) | Err(sqlx::Error::Database(_)) => {
                let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() < BATCHES_IN_FLIGHT {
                    kept.push(conn);
                }
            }
            Err(_) => {
                let mut conn = conn;
                conn.close_on_drop();
            }
        }
    }

    /// Give every kept connection back to the pool (idle: the pool can
    /// close them, and `Pg::close` does not wait for them).
    fn release(&self) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn err(&self, source: sqlx::Error) -> ExplorerError {
        ExplorerError::Database {
            at: self.at.clone(),
            source,
        }
    }

    /// Answer `q`'s submitter. A new reservation's NOTIFY is queued here,
    /// so it goes out even if the submitter is gone (its POST cancelled);
    /// then this replica's polls are woken here too (the server wakes
    /// them after a `create` that returns, and this replica skips its own
    /// NOTIFYs): see [`Waiting`].
    fn answer(&self, mut q: Queued, stored: Result<Saved, ExplorerError>) {
        if let Ok((number, true, after)) = stored {
            // Its id, as `Pg::inserted` gives it to the submitter.
            q.r.id = format!("{number}-1");
            let _ = self.wake_tx.send(Notice::wrote(&q.r, after));
        }
        if let Err((r, Ok((_, true, _)))) = q.answer.send((q.r, stored)) {
            wake_local(&self.local, &r.node_id);
        }
    }

    /// Count `statements` that answered `rows` POSTs.
    fn count(&self, statements: u64, rows: u64) {
        self.counts
            .statements
            .fetch_add(statements, Ordering::Relaxed);
        self.counts.rows.fetch_add(rows, Ordering::Relaxed);
    }
}

/// Wake this replica's polls of `node_id` (once the server handed them
/// over: before that none is held).
fn wake_local(local: &OnceLock<Arc<Wakers>>, node_id: &str) {
    if let Some(w) = local.get() {
        w.wake(node_id);
    }
}

/// A `create` waiting for [`writer`]'s answer. Dropped before the answer
/// was taken (the POST was cancelled), it closes the channel, and wakes
/// this replica's polls of the node if a new reservation's answer is
/// there (a later answer cannot be sent: [`Batcher::answer`] wakes them).
/// Without this, a poll held here on a quiet proof would miss it.
struct Waiting<'a> {
    rx: Option<oneshot::Receiver<Stored>>,
    local: &'a OnceLock<Arc<Wakers>>,
}

impl Waiting<'_> {
    async fn answer(mut self) -> Option<Stored> {
        let got = self.rx.as_mut()?.await.ok();
        self.rx = None;
        got
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok((r, Ok((_, true, _)))) = rx.try_recv() {
                wake_local(self.local, &r.node_id);
            }
        }
    }
}

/// Stores the reservations [`Storage::create`] queues: whatever is queued
/// when a batch starts (up to [`MAX_BATCH`]) goes to the database in one
/// statement, one transaction, one commit (the migration's
/// `explorer_insert_reservations`), with at most [`BATCHES_IN_FLIGHT`]
/// statements running. Alone, a reservation goes out at once; under load
/// every POST of this replica shares a commit with its neighbours.
/// Ends when the `Pg` is dropped.
async fn writer(b: Batcher, mut rx: tokio::sync::mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Quiet for a while: the kept connections go back to the pool
        // (again each while: a batch that ended late kept its own).
        let first = loop {
            match tokio::time::timeout(WRITER_IDLE, rx.recv()).await {
                Ok(first) => break first,
                Err(_) => b.release(),
            }
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let b = b.clone();
        tokio::spawn(async move {
            insert_batch(&b, batch).await;
            drop(slot);
        });
    }
}

/// Store `batch` in one statement and answer each submitter. When the
/// database refuses the statement (a row it will not take; nothing of it
/// is committed then), each row of a larger batch is stored on its own,
/// so one bad row fails only its own POST; when the database cannot be
/// reached, every submitter gets that error.
async fn insert_batch(b: &Batcher, batch: Vec<Queued>) {
    let n = batch.len();
    let rows_of = || batch.iter().map(|q| (&q.r, q.expires_ns));
    let rows = match b.take().await {
        Some(mut conn) => {
            let rows = insert_rows(&mut *conn, rows_of()).await;
            b.give_back(conn, &rows);
            rows
        }
        None => insert_rows(&b.pool, rows_of()).await,
    };
    match rows {
        Err(sqlx::Error::Database(refused)) if n > 1 => {
            warn!(database = %b.at, rows = n, error = %refused, "a batch of reservations was refused; storing each on its own");
            insert_each(b, batch).await;
        }
        Ok(rows) => {
            b.count(1, n as u64);
            let mut rows = rows.into_iter();
            for q in batch {
                let stored = rows
                    .next()
                    .unwrap_or(Err(sqlx::Error::RowNotFound))
                    .map_err(|e| b.err(e));
                b.answer(q, stored);
            }
        }
        Err(e) if n == 1 => {
            b.count(1, 1);
            if let Some(q) = batch.into_iter().next() {
                b.answer(q, Err(b.err(e)));
            }
        }
        Err(e) => {
            // Not a refusal: the connection failed (the batch may or may
            // not have committed; a re-post answers 409 if it did).
            let shown = e.to_string();
            for q in batch {
                let failed = std::io::Error::other(shown.clone());
                b.answer(q, Err(b.err(sqlx::Error::Io(failed))));
            }
        }
    }
}

/// Store each of `batch` in a statement of its own, at once, and answer
/// each submitter. Awaited within the batch's slot of [`writer`]: a stream
/// of refused batches (one hostile row in each) cannot pile up inserts
/// beyond [`BATCHES_IN_FLIGHT`] batches.
async fn insert_each(b: &Batcher, batch: Vec<Queued>) {
    join_all(batch.into_iter().map(|q| async move {
        let stored = insert_one(&b.pool, &b.at, &q.r, q.expires_ns).await;
        b.count(1, 1);
        b.answer(q, stored);
    }))
    .await;
}

/// Store `rows` (each reservation with its expiry in unix nanoseconds) in
/// one statement, one transaction (the migrations'
/// `explorer_insert_reservations`, also for one row: one code path keeps
/// one set of rules); each row's number and whether it is new, in order.
async fn insert_rows<'a, 'c>(
    on: impl sqlx::PgExecutor<'c>,
    rows: impl ExactSizeIterator<Item = (&'a Reservation, i64)>,
) -> Result<Vec<Result<Saved, sqlx::Error>>, sqlx::Error> {
    let n = rows.len();
    let mut version = Vec::with_capacity(n);
    let mut node_id = Vec::with_capacity(n);
    let mut user_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut duration = Vec::with_capacity(n);
    let mut nonce = Vec::with_capacity(n);
    let mut signature = Vec::with_capacity(n);
    let mut to_delete = Vec::with_capacity(n);
    let mut delete_signature = Vec::with_capacity(n);
    let mut expires_ns = Vec::with_capacity(n);
    for (r, expires) in rows {
        version.push(i32::try_from(r.version).unwrap_or(i32::MAX));
        node_id.push(r.node_id.as_str());
        user_id.push(r.user_id.as_str());
        kind.push(r.kind.as_bytes());
        data.push(r.data.get());
        created.push(r.created);
        duration.push(r.duration);
        nonce.push(r.nonce.as_str());
        signature.push(r.signature.as_str());
        to_delete.push(r.to_delete);
        delete_signature.push(r.delete_signature.as_deref());
        expires_ns.push(expires);
    }
    let rows = sqlx::query(
        "SELECT o_number, o_new, o_after FROM explorer_insert_reservations_after(\
         $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         WITH ORDINALITY AS t(o_number, o_new, o_after, i) \
         ORDER BY i",
    )
    .bind(&version)
    .bind(&node_id)
    .bind(&user_id)
    .bind(&kind)
    .bind(&data)
    .bind(&created)
    .bind(&duration)
    .bind(&nonce)
    .bind(&signature)
    .bind(&to_delete)
    .bind(&delete_signature)
    .bind(&expires_ns)
    .fetch_all(on)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let after = row.try_get::<Option<i64>, _>(2)?;
            Ok((
                row.try_get::<i64, _>(0)?,
                row.try_get::<bool, _>(1)?,
                after.and_then(|a| u64::try_from(a).ok()),
            ))
        })
        .collect())
}

/// Store one reservation: a batch of one ([`insert_rows`]).
async fn insert_one(
    pool: &PgPool,
    at: &str,
    r: &Reservation,
    expires_ns: i64,
) -> Result<Saved, ExplorerError> {
    insert_rows(pool, std::iter::once((r, expires_ns)))
        .await
        .and_then(|rows| {
            rows.into_iter()
                .next()
                .unwrap_or(Err(sqlx::Error::RowNotFound))
        })
        .map_err(|source| ExplorerError::Database {
            at: at.to_string(),
            source,
        })
}

/// Resolves once `shutdown` is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The number of `id` as PostgreSQL stores it (`bigint`), if `id` is one
/// this explorer hands out.
fn number_of(id: &str) -> Option<i64> {
    canonical_number(id).and_then(|n| i64::try_from(n).ok())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

#[async_trait]
impl Storage for Pg {
    fn describe(&self) -> String {
        format!("PostgreSQL at {}", self.at)
    }

    async fn create(&self, r: Reservation) -> Result<Insert, ExplorerError> {
        // nanoseconds since 1970 at which it ends; a reservation with no
        // lifetime is expired (POST refuses those anyway).
        let expires_ns = expires_ns(&r);
        // Queued to this replica's writer, stored with whatever other
        // POSTs arrive meanwhile (group commit: see `writer`). The queue is
        // bounded: when it is full the database lags behind the POSTs, and
        // this one is refused before anything of it is written (busy:
        // 503, post again later) rather than held in memory.
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            r,
            expires_ns,
            answer,
        };
        let q = match self.insert_tx.try_send(queued) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => {
                return Err(ExplorerError::Busy {
                    queued: self.max_queued,
                    retry_after_secs: RETRY_AFTER_SECS,
                })
            }
            Err(TrySendError::Closed(q)) => Some(q),
        };
        if let Some(q) = q {
            // The writer is gone (the server is stopping): store it alone.
            let stored = insert_one(&self.pool, &self.at, &q.r, q.expires_ns).await;
            if let Ok((_, true, _)) = stored {
                self.notify(&q.r.node_id);
            }
            return self.inserted(q.r, stored);
        }
        let waiting = Waiting {
            rx: Some(answered),
            local: &self.local,
        };
        let Some((r, stored)) = waiting.answer().await else {
            // The writer dropped it without an answer (it panicked).
            return Err(self.err(sqlx::Error::WorkerCrashed));
        };
        self.inserted(r, stored)
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, ExplorerError> {
        let Some(number) = number_of(id) else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {COLUMNS}, deleted, deleted_signature, \
               ARRAY(SELECT body FROM results WHERE results.number = reservations.number ORDER BY seq) AS results \
             FROM reservations WHERE number = $1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let reservation = self.reservation(&row)?;
        let bodies: Vec<String> = row.try_get("results").map_err(|e| self.err(e))?;
        let results = bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(|e| self.corrupt(format!("results/{id}"), e)))
            .collect::<Result<_, _>>()?;
        Ok(Some(Record {
            v: SCHEMA,
            reservation,
            results,
            deleted: row.try_get("deleted").map_err(|e| self.err(e))?,
            deleted_signature: row.try_get("deleted_signature").map_err(|e| self.err(e))?,
        }))
    }

    async fn add_result(&self, id: &str, result: WorkloadResult) -> Result<bool, ExplorerError> {
        let Some(number) = number_of(id) else {
            return Ok(false);
        };
        let done = sqlx::query(
            "INSERT INTO results (number, signature, body) \
             SELECT number, $2, $3 FROM reservations WHERE number = $1 \
             ON CONFLICT (number, signature) DO NOTHING \
             RETURNING 1",
        )
        .bind(number)
        .bind(&result.signature)
        .bind(to_json(&result))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if done.is_some() {
            return Ok(true);
        }
        // Nothing inserted: the same result again (fine), or no such
        // reservation.
        let exists = sqlx::query("SELECT 1 FROM reservations WHERE number = $1")
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(exists.is_some())
    }

    async fn mark_deleted(&self, id: &str, confirmation: String) -> Result<bool, ExplorerError> {
        let Some(number) = number_of(id) else {
            return Ok(false);
        };
        let row = sqlx::query(
            "UPDATE reservations SET deleted = true, deleted_signature = $2 \
             WHERE number = $1 RETURNING 1",
        )
        .bind(number)
        .bind(confirmation)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(row.is_some())
    }

    async fn set_to_delete(&self, id: &str, sig: String) -> Result<Option<String>, ExplorerError> {
        let Some(number) = number_of(id) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "UPDATE reservations SET to_delete = true, delete_signature = $2 \
             WHERE number = $1 RETURNING node_id",
        )
        .bind(number)
        .bind(sig)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let node: String = row.try_get("node_id").map_err(|e| self.err(e))?;
        self.notify(&node);
        Ok(Some(node))
    }

    async fn poll(
        &self,
        node_id: &str,
        q: PollRange,
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, ExplorerError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let from = i64::try_from(q.from).unwrap_or(i64::MAX);
        let now_ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {COLUMNS} FROM reservations WHERE node_id = $1 AND ( \
               ($3 AND number >= $2) \
               OR (NOT $3 AND NOT deleted AND (to_delete OR (number >= $2 AND expires_ns > $4)))) \
             ORDER BY number LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(node_id)
            .bind(from)
            .bind(q.all)
            .bind(now_ns)
            .bind(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.reservation(r)).collect()
    }

    async fn register_node(
        &self,
        node_id: &str,
        url: &str,
        capacity: Capacity,
        timestamp: i64,
        now_ms: i64,
    ) -> Result<Result<NodeInfo, String>, ExplorerError> {
        // The clock check needs no state; the "newer than the last" check
        // is the upsert's WHERE.
        if let Err(e) = reservation::node::check_timestamp(timestamp, now_ms, None) {
            return Ok(Err(e.to_string()));
        }
        let row = sqlx::query(
            "INSERT INTO nodes (node_id, url, capacity, used, draining, last_heartbeat, last_timestamp) \
             VALUES ($1, $2, $3, $4, false, NULL, $5) \
             ON CONFLICT (node_id) DO UPDATE \
               SET url = EXCLUDED.url, capacity = EXCLUDED.capacity, last_timestamp = EXCLUDED.last_timestamp \
               WHERE nodes.last_timestamp IS NULL OR nodes.last_timestamp < EXCLUDED.last_timestamp \
             RETURNING node_id, url, capacity, used, draining, last_heartbeat",
        )
        .bind(node_id)
        .bind(url.as_bytes())
        .bind(to_json(&capacity))
        .bind(to_json(&Capacity::default()))
        .bind(timestamp)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if let Some(row) = row {
            return Ok(Ok(self.node(&row)?));
        }
        let last = self.last_timestamp(node_id).await?.flatten();
        Ok(Err(
            match reservation::node::check_timestamp(timestamp, now_ms, last) {
                Err(e) => e.to_string(),
                Ok(()) => format!("timestamp: {timestamp} lost a race with another message of this node; sign a fresh one"),
            },
        ))
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        used: Capacity,
        draining: bool,
        timestamp: i64,
        now: DateTime<Utc>,
    ) -> Result<NodeUpdate, ExplorerError> {
        let now_ms = now.timestamp_millis();
        let clock = reservation::node::check_timestamp(timestamp, now_ms, None);
        let row = match clock {
            Err(_) => None,
            Ok(()) => sqlx::query(
                "UPDATE nodes SET used = $2, draining = $3, last_heartbeat = $4, last_timestamp = $5 \
                 WHERE node_id = $1 AND (last_timestamp IS NULL OR last_timestamp < $5) \
                 RETURNING 1",
            )
            .bind(node_id)
            .bind(to_json(&used))
            .bind(draining)
            .bind(now)
            .bind(timestamp)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?,
        };
        if row.is_some() {
            return Ok(NodeUpdate::Done);
        }
        // Unknown node, or a timestamp refused: say which, as sled does.
        let Some(last) = self.last_timestamp(node_id).await? else {
            return Ok(NodeUpdate::Unknown);
        };
        Ok(NodeUpdate::Stale(
            match reservation::node::check_timestamp(timestamp, now_ms, last) {
                Err(e) => e.to_string(),
                Ok(()) => format!("timestamp: {timestamp} lost a race with another message of this node; sign a fresh one"),
            },
        ))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, ExplorerError> {
        let rows = sqlx::query(
            "SELECT node_id, url, capacity, used, draining, last_heartbeat FROM nodes \
             ORDER BY node_id COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.node(r)).collect()
    }

    async fn flush(&self) -> Result<(), ExplorerError> {
        // Every statement above commits before it returns.
        Ok(())
    }

    async fn health(&self) -> Result<(), String> {
        let check = sqlx::query("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(Duration::from_secs(3), check).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{}: {e}", self.at)),
            Err(_) => Err(format!("{}: no answer within 3 s", self.at)),
        }
    }

    fn forward_wakeups(&self, wakers: Arc<Wakers>, mut shutdown: watch::Receiver<bool>) {
        // Until LISTEN is up, other replicas' writes do not wake here: no
        // poll may be held on what an earlier query proved.
        wakers.set_complete(false);
        let _ = self.local.set(wakers.clone());
        let pool = self.pool.clone();
        let at = self.at.clone();
        let own_pid = self.own_pid.clone();
        tokio::spawn(async move {
            let mut listener: Option<PgListener> = None;
            let mut reader = Reader::default();
            let mut warned: Option<Instant> = None;
            loop {
                let l = match listener.as_mut() {
                    Some(l) => l,
                    None => {
                        let connected = async {
                            let mut l = PgListener::connect_with(&pool).await?;
                            l.listen_all([WROTE_CHANNEL, WAKE_CHANNEL]).await?;
                            Ok::<_, sqlx::Error>(l)
                        };
                        tokio::select! {
                            _ = stopped(&mut shutdown) => return,
                            r = connected => match r {
                                Ok(l) => {
                                    // Anything committed before LISTEN took
                                    // effect: every held poll looks again.
                                    wakers.wake_all();
                                    wakers.set_complete(true);
                                    listener.insert(l)
                                }
                                Err(e) => {
                                    warn!(database = %at, error = %e, "cannot LISTEN for other replicas' wake-ups; held polls answer at their deadline meanwhile; retrying in 1 s");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    continue;
                                }
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = stopped(&mut shutdown) => return,
                    m = l.try_recv() => match m {
                        Ok(Some(n)) => {
                            let heard = reader.read(n.process_id(), n.channel(), n.payload());
                            // This replica's own NOTIFY: the server woke
                            // its polls of the node already.
                            let own = n.process_id() == own_pid.load(Ordering::SeqCst);
                            match heard {
                                _ if own => {}
                                Heard::Wrote(r, after) => wakers.wrote(&r, Some(after)),
                                Heard::Wake(node) => wakers.wake(&node),
                                Heard::Copy => {}
                                Heard::Unreadable { node, error } => {
                                    if warned.is_none_or(|t| t.elapsed() > UNREADABLE_WARN_EVERY) {
                                        warned = Some(Instant::now());
                                        warn!(database = %at, channel = WROTE_CHANNEL, node = node.as_deref().unwrap_or("(none)"), error = %error, "unreadable wake-up from another replica (a later release?); the polls of the node it names look again, or every held poll if it names none (said at most once a minute)");
                                    }
                                    match node {
                                        Some(node) => wakers.wake(&node),
                                        None => wakers.wake_all(),
                                    }
                                }
                            }
                        }
                        // The connection was lost: notifications may be
                        // lost until a new one listens (above, which wakes
                        // every held poll once it does).
                        Ok(None) => {
                            warn!(database = %at, "the LISTEN connection was lost; reconnecting; held polls look again");
                            // The database may have restarted and hand
                            // the notifier's process id to another
                            // replica's session: forget it (see notifier).
                            own_pid.store(0, Ordering::SeqCst);
                            wakers.set_complete(false);
                            listener = None;
                            reader = Reader::default();
                            wakers.wake_all();
                        }
                        Err(e) => {
                            warn!(database = %at, error = %e, "LISTEN connection failed; reconnecting in 1 s");
                            own_pid.store(0, Ordering::SeqCst);
                            wakers.set_complete(false);
                            listener = None;
                            reader = Reader::default();
                            wakers.wake_all();
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        });
    }

    fn connections(&self) -> Option<Connections> {
        Some(Connections {
            open: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            insert_statements: self.batches.statements.load(Ordering::Relaxed),
            inserted_rows: self.batches.rows.load(Ordering::Relaxed),
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
