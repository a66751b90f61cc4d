//! Wake-ups across processes for the embedded bus: one doorbell file per subscriber, in a
//! folder beside the bus file. Whoever commits something a subscriber's consumers should look
//! at — a publish to one of its topics, a retry or a hand-back, an acknowledgement that lets a
//! later event of the same subject through — writes a byte to that subscriber's doorbell once
//! the commit is visible. Each process watches, with inotify, the doorbells of the subscribers
//! it has consumers for. So a consumer wakes when there is something new for it, and only
//! then: an idle bus costs no CPU, and a busy one does not wake every consumer of every
//! process on every commit.
//!
//! Where inotify is missing or refused, the process reads `PRAGMA data_version` every
//! [`POLL_INTERVAL`] instead (a counter in the WAL index that changes whenever another
//! connection commits) and wakes all its consumers on each change. A ring that never comes (a
//! process killed between its commit and its ring) only delays a delivery until the
//! consumers' backstop poll.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::watch;

use crate::error::BusError;

/// How often the data version is read where there is no inotify.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The doorbells of one bus file, and this process's listeners.
#[derive(Debug)]
pub(super) struct Doorbells {
    folder: PathBuf,
    /// Doorbell files opened for ringing, by subscriber.
    files: Mutex<HashMap<String, File>>,
    listeners: Mutex<Listeners>,
}

#[derive(Debug, Default)]
struct Listeners {
    /// Bumped on each ring of the subscriber's doorbell.
    by_subscriber: HashMap<String, watch::Sender<u64>>,
    /// Which subscriber's doorbell each inotify watch is on.
    #[cfg(target_os = "linux")]
    by_watch: HashMap<inotify::WatchDescriptor, String>,
    /// Where watches are added; `None` when the process polls instead.
    #[cfg(target_os = "linux")]
    watches: Option<inotify::Watches>,
}

/// What the watcher task waits on.
pub(super) enum Bells {
    /// inotify events on the doorbells this process listens to.
    #[cfg(target_os = "linux")]
    Notified(inotify::EventStream<Vec<u8>>),
    /// The data version, read every [`POLL_INTERVAL`].
    Polled {
        version: DataVersion,
        tick: tokio::time::Interval,
    },
}

/// `PRAGMA data_version` on a connection of its own: it reads a counter in the WAL index
/// (shared memory), takes no lock, and changes once another connection's commit is visible.
pub(super) struct DataVersion {
    conn: SqliteConnection,
    last: Option<i64>,
}

impl DataVersion {
    async fn changed(&mut self) -> Result<bool, String> {
        let version = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?;
        let changed = self.last.is_some_and(|last| last != version);
        self.last = Some(version);
        Ok(changed)
    }
}

impl Doorbells {
    /// The doorbells of `bus_file` (their folder is created when missing), and what this
    /// process's watcher is to wait on: inotify where it can be had, or else polling.
    pub(super) async fn open(
        bus_file: &Path,
        options: &SqliteConnectOptions,
    ) -> Result<(Self, Bells), BusError> {
        let mut folder = bus_file.as_os_str().to_owned();
        folder.push("-doorbells");
        let folder = PathBuf::from(folder);
        std::fs::create_dir_all(&folder).map_err(|e| BusError::Database(sqlx::Error::Io(e)))?;
        let mut listeners = Listeners::default();
        #[cfg(target_os = "linux")]
        let notified = inotify::Inotify::init().and_then(|inotify| {
            let events = inotify.into_event_stream(vec![0; 4096])?;
            listeners.watches = Some(events.watches());
            Ok(events)
        });
        let doorbells = Self {
            folder,
            files: Mutex::default(),
            listeners: Mutex::new(listeners),
        };
        #[cfg(target_os = "linux")]
        match notified {
            Ok(events) => return Ok((doorbells, Bells::Notified(events))),
            Err(error) => {
                tracing::info!(%error, "no inotify on the embedded bus; polling it every 2 ms");
            }
        }
        let version = DataVersion {
            conn: sqlx::ConnectOptions::connect(options).await?,
            last: None,
        };
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok((doorbells, Bells::Polled { version, tick }))
    }

    fn path(&self, subscriber: &str) -> PathBuf {
        self.folder.join(subscriber)
    }

    /// Wake `subscriber`'s consumers in every process: call once its commit is visible. A
    /// failure is logged (the consumers' backstop poll still finds the work).
    pub(super) fn ring<'a>(&self, subscribers: impl IntoIterator<Item = &'a str>) {
        use std::os::unix::fs::FileExt as _;
        let mut files = locked(&self.files);
        for subscriber in subscribers {
            let rung = match files.get(subscriber) {
                Some(file) => file.write_at(&[1], 0),
                None => bell_file(&self.path(subscriber)).and_then(|file| {
                    file.write_at(&[1], 0)?;
                    files.insert(subscriber.to_owned(), file);
                    Ok(1)
                }),
            };
            if let Err(error) = rung {
                tracing::warn!(subscriber, %error, "ringing an embedded bus doorbell failed");
            }
        }
    }

    /// A receiver that changes whenever `subscriber`'s doorbell rings. Listening starts before
    /// this returns, so a ring after it is never missed.
    pub(super) fn listen(&self, subscriber: &str) -> Result<watch::Receiver<u64>, BusError> {
        let mut listeners = locked(&self.listeners);
        if let Some(sender) = listeners.by_subscriber.get(subscriber) {
            return Ok(sender.subscribe());
        }
        #[cfg(target_os = "linux")]
        {
            let path = self.path(subscriber);
            let watched = listeners.watches.as_mut().map(|watches| {
                bell_file(&path)?;
                watches.add(&path, inotify::WatchMask::MODIFY)
            });
            if let Some(watch) = watched
                .transpose()
                .map_err(|e| BusError::Database(sqlx::Error::Io(e)))?
            {
                listeners.by_watch.insert(watch, subscriber.to_owned());
            }
        }
        let (sender, receiver) = watch::channel(0);
        listeners.by_subscriber.insert(subscriber.to_owned(), sender);
        Ok(receiver)
    }

    /// Wait for rings and wake the consumers they are for; `Err` when watching fails.
    pub(super) async fn next(&self, bells: &mut Bells) -> Result<(), String> {
        match bells {
            #[cfg(target_os = "linux")]
            Bells::Notified(events) => {
                use futures_util::{FutureExt as _, StreamExt as _};
                let mut rung = Vec::new();
                let first = events.next().await.ok_or("the inotify watch ended")?;
                rung.push(first.map_err(|e| e.to_string())?.wd);
                while let Some(Some(event)) = events.next().now_or_never() {
                    rung.push(event.map_err(|e| e.to_string())?.wd);
                }
                let listeners = locked(&self.listeners);
                for watch in rung {
                    match listeners
                        .by_watch
                        .get(&watch)
                        .and_then(|subscriber| listeners.by_subscriber.get(subscriber))
                    {
                        Some(sender) => wake(sender),
                        // An event of no watch of ours (a queue overflow) may hide any ring.
                        None => listeners.by_subscriber.values().for_each(wake),
                    }
                }
                Ok(())
            }
            Bells::Polled { version, tick } => loop {
                tick.tick().await;
                if version.changed().await? {
                    self.wake_all();
                    return Ok(());
                }
            },
        }
    }

    /// Wake every consumer of this process (after a failure to watch).
    pub(super) fn wake_all(&self) {
        let listeners = locked(&self.listeners);
        listeners.by_subscriber.values().for_each(wake);
    }
}

/// The lock's contents, even if a holder panicked (they are maps that stay consistent).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wake(sender: &watch::Sender<u64>) {
    sender.send_modify(|rings| *rings += 1);
}

/// A doorbell file, created when missing, open for writing.
fn bell_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}
