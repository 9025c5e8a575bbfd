//! The disk tier: survives restarts, never serves a torn write, stays within its size.
//!
//! Layout under the configured directory:
//! - `index.redb`: a redb database (crash-safe, copy-on-write B-tree with checksummed
//!   commits) mapping each key to its object id and byte size.
//! - `objects/<id>`: one file per entry in the checksummed form of [`crate::cache::object`].
//!
//! Write: the object goes to `objects/<id>.tmp`, is fsynced and renamed into place, and only
//! then is the index row committed; the old object file is deleted after the commit. A kill
//! -9 at any point leaves either the old row (old file intact) or the new row (new file
//! complete); a leftover `.tmp` or unreferenced file is deleted at the next start.
//! Read: the file's length and CRC-32 are checked; a mismatch (e.g. the disk lost the tail
//! of a file) is a miss and the entry is dropped. Large objects (at least [`FILE_BODY_MIN`]
//! bytes) are checked once per file identity (inode, size, mtime, ctime; see
//! [`Identity`]): after a good check, later reads of the same unchanged file skip the CRC
//! and leave bodies of [`FILE_BODY_MIN`] bytes or more in the file, for `sendfile(2)`.
//! Any change made through the file system (a write, truncate, utimes, a replaced file)
//! changes the identity and the object is checked again before it is served.
//! Start: every index row whose file is missing or of the wrong size is dropped, orphan files
//! are deleted, and the oldest objects are evicted until the total fits the limit.
//! Eviction: least recently used (order kept in memory; after a restart, write order).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};

use super::{BoxFut, StoreError, Tier, TierStats};
use crate::cache::object::{decode, decode_file, encode, Entry};

const INDEX: TableDefinition<&str, (u64, u64)> = TableDefinition::new("entries");
/// Each entry's cache tags (newline-separated), for purges by tag without reading objects.
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");

/// Objects this large are checked once per [`Identity`]; bodies this large are served from
/// the file. Smaller objects are read whole and checked on every read.
pub const FILE_BODY_MIN: u64 = 64 * 1024;

/// How old a file's last change must be before a good check is remembered. File times tick
/// coarsely (a few ms on Linux, 2 s on FAT): a change in the same tick as the check would
/// leave the identity unchanged ("racily clean", as git calls it). Younger files are read
/// and checked whole, as small ones are.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What identifies one unchanged object file: a write or truncate through the file system
/// moves `mtime` and `ctime`, `utimes` moves `ctime`, a replacement changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub fn of(m: &fs::Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether the file last changed at least `settle` before `now` (see [`SETTLE`]).
    pub fn settled(&self, now: SystemTime, settle: Duration) -> bool {
        let latest = self.mtime.max(self.ctime);
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let changed = Duration::new(
            latest.0.max(0) as u64,
            latest.1.clamp(0, 999_999_999) as u32,
        );
        changed + settle <= now
    }
}

#[derive(Clone, Copy)]
struct Meta {
    id: u64,
    size: u64,
    /// Recency stamp (position in `State::order`).
    used: u64,
    /// The object file's identity when its CRC was last found good (large objects only).
    verified: Option<Identity>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Meta>,
    /// `used` stamp -> key, oldest first.
    order: BTreeMap<u64, String>,
    total: u64,
    clock: u64,
    /// Tag -> keys, and each key's tags.
    tagged: HashMap<String, std::collections::HashSet<String>>,
    key_tags: HashMap<String, Vec<String>>,
}

impl State {
    fn touch(&mut self, key: &str) -> Option<Meta> {
        self.clock += 1;
        let clock = self.clock;
        let m = self.entries.get_mut(key)?;
        self.order.remove(&m.used);
        m.used = clock;
        self.order.insert(clock, key.to_string());
        Some(*m)
    }

    fn insert(&mut self, key: &str, id: u64, size: u64) -> Option<Meta> {
        let old = self.take(key);
        self.clock += 1;
        self.entries.insert(
            key.to_string(),
            Meta {
                id,
                size,
                used: self.clock,
                verified: None,
            },
        );
        self.order.insert(self.clock, key.to_string());
        self.total += size;
        old
    }

    fn set_tags(&mut self, key: &str, tags: Vec<String>) {
        self.untag(key);
        for t in &tags {
            self.tagged
                .entry(t.clone())
                .or_default()
                .insert(key.to_string());
        }
        if !tags.is_empty() {
            self.key_tags.insert(key.to_string(), tags);
        }
    }

    fn untag(&mut self, key: &str) {
        for t in self.key_tags.remove(key).unwrap_or_default() {
            if let Some(keys) = self.tagged.get_mut(&t) {
                keys.remove(key);
                if keys.is_empty() {
                    self.tagged.remove(&t);
                }
            }
        }
    }

    fn take(&mut self, key: &str) -> Option<Meta> {
        self.untag(key);
        let m = self.entries.remove(key)?;
        self.order.remove(&m.used);
        self.total -= m.size;
        Some(m)
    }
}

struct Inner {
    objects: PathBuf,
    db: Database,
    limit: u64,
    state: Mutex<State>,
    next_id: AtomicU64,
    evictions: AtomicU64,
    /// [`SETTLE`]; shorter in unit tests.
    settle: Duration,
}

#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
}

fn index_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

impl DiskTier {
    /// Opens (or creates) the tier in `dir`, validating the index against the files. Blocking:
    /// call before serving or from the blocking pool.
    pub fn open(dir: &Path, limit: u64) -> Result<DiskTier, StoreError> {
        DiskTier::open_with(dir, limit, SETTLE)
    }

    /// [`DiskTier::open`] with another settle time (tests).
    pub fn open_with(dir: &Path, limit: u64, settle: Duration) -> Result<DiskTier, StoreError> {
        let objects = dir.join("objects");
        fs::create_dir_all(&objects)?;
        let db = Database::builder()
            .set_cache_size(8 << 20)
            .create(dir.join("index.redb"))
            .map_err(index_err)?;
        let inner = Inner {
            objects,
            db,
            limit,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            evictions: AtomicU64::new(0),
            settle,
        };
        inner.rebuild()?;
        Ok(DiskTier {
            inner: Arc::new(inner),
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, id: u64) -> PathBuf {
        self.objects.join(format!("{id:016x}"))
    }

    fn rebuild(&self) -> Result<(), StoreError> {
        let mut rows: Vec<(String, u64, u64)> = Vec::new();
        let mut loaded_tags: Vec<(String, Vec<String>)> = Vec::new();
        let tx = self.db.begin_write().map_err(index_err)?;
        {
            let mut table = tx.open_table(INDEX).map_err(index_err)?;
            let mut bad: Vec<String> = Vec::new();
            for row in table.iter().map_err(index_err)? {
                let (k, v) = row.map_err(index_err)?;
                let (key, (id, size)) = (k.value().to_string(), v.value());
                match fs::metadata(self.path(id)) {
                    Ok(m) if m.len() == size => rows.push((key, id, size)),
                    _ => bad.push(key),
                }
            }
            for key in &bad {
                table.remove(key.as_str()).map_err(index_err)?;
            }
            let mut tags_table = tx.open_table(TAGS).map_err(index_err)?;
            for key in &bad {
                tags_table.remove(key.as_str()).map_err(index_err)?;
            }
            for row in tags_table.iter().map_err(index_err)? {
                let (k, v) = row.map_err(index_err)?;
                let tags = v.value().split('\n').map(str::to_string).collect();
                loaded_tags.push((k.value().to_string(), tags));
            }
        }
        tx.commit().map_err(index_err)?;
        // Write order approximates recency after a restart.
        rows.sort_by_key(|r| r.1);
        let referenced: std::collections::HashSet<u64> = rows.iter().map(|r| r.1).collect();
        let mut max_id = rows.iter().map(|r| r.1).max().unwrap_or(0);
        for f in fs::read_dir(&self.objects)?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let id = u64::from_str_radix(&name, 16).ok();
            if let Some(id) = id {
                max_id = max_id.max(id);
            }
            if id.is_none_or(|id| !referenced.contains(&id)) {
                let _ = fs::remove_file(f.path());
            }
        }
        self.next_id.store(max_id + 1, Ordering::Relaxed);
        let mut state = self.lock();
        for (key, id, size) in rows {
            state.insert(&key, id, size);
        }
        for (key, tags) in loaded_tags {
            if state.entries.contains_key(&key) {
                state.set_tags(&key, tags);
            }
        }
        self.evict_to(&mut state, self.limit)
    }

    /// Evicts least recently used entries until `total <= target`.
    fn evict_to(&self, state: &mut State, target: u64) -> Result<(), StoreError> {
        let mut victims = Vec::new();
        while state.total > target {
            let Some((_, key)) = state.order.pop_first() else {
                break;
            };
            if let Some(m) = state.entries.remove(&key) {
                state.total -= m.size;
                victims.push((key, m.id));
            }
        }
        if victims.is_empty() {
            return Ok(());
        }
        self.evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        self.delete_rows(victims.iter().map(|v| v.0.as_str()))?;
        for (_, id) in victims {
            let _ = fs::remove_file(self.path(id));
        }
        Ok(())
    }

    fn delete_rows<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(index_err)?;
        {
            let mut table = tx.open_table(INDEX).map_err(index_err)?;
            let mut tags = tx.open_table(TAGS).map_err(index_err)?;
            for k in keys {
                table.remove(k).map_err(index_err)?;
                tags.remove(k).map_err(index_err)?;
            }
        }
        tx.commit().map_err(index_err)
    }

    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let meta = self.lock().touch(key)?;
        match self.read(&meta) {
            Some((entry, verified)) => {
                if let Some(ident) = verified {
                    let mut state = self.lock();
                    if let Some(m) = state.entries.get_mut(key).filter(|m| m.id == meta.id) {
                        m.verified = Some(ident);
                    }
                }
                Some(Arc::new(entry))
            }
            None => {
                tracing::warn!(
                    key,
                    id = meta.id,
                    "cache: dropping unreadable or corrupt disk object"
                );
                self.remove_if(key, meta.id);
                None
            }
        }
    }

    /// Reads object `meta.id`: in place without the CRC when this unchanged file was checked
    /// before, else whole and checked (returning the identity to remember when the object is
    /// large and its file settled). `None`: unreadable, wrong size or corrupt.
    fn read(&self, meta: &Meta) -> Option<(Entry, Option<Identity>)> {
        let file = fs::File::open(self.path(meta.id)).ok()?;
        let ident = Identity::of(&file.metadata().ok()?);
        if ident.size != meta.size {
            return None;
        }
        if meta.verified == Some(ident) {
            return decode_file(Arc::new(file), meta.size, FILE_BODY_MIN)
                .ok()
                .map(|e| (e, None));
        }
        let mut buf = vec![0u8; usize::try_from(meta.size).ok()?];
        file.read_exact_at(&mut buf, 0).ok()?;
        let entry = decode(Bytes::from(buf)).ok()?;
        let remember = meta.size >= FILE_BODY_MIN
            && ident.settled(SystemTime::now(), self.settle)
            // Unchanged while it was read (the check covers the bytes of this identity).
            && file.metadata().is_ok_and(|m| Identity::of(&m) == ident);
        Some((entry, remember.then_some(ident)))
    }

    /// Removes `key` only if it still points at object `id` (a newer write may have won).
    fn remove_if(&self, key: &str, id: u64) {
        let mut state = self.lock();
        if state.entries.get(key).is_some_and(|m| m.id == id) {
            state.take(key);
            let _ = self.delete_rows(std::iter::once(key));
            let _ = fs::remove_file(self.path(id));
        }
    }

    /// Writes `entry` for `key`, unless `still_valid` (asked under the state lock, right
    /// before the index commit) says the key was invalidated meanwhile.
    fn put(
        &self,
        key: &str,
        entry: &Entry,
        tags: Vec<String>,
        still_valid: &dyn Fn() -> bool,
    ) -> Result<(), StoreError> {
        let loaded;
        let entry = match entry.has_file_bodies() {
            true => {
                loaded = entry.loaded()?;
                &loaded
            }
            false => entry,
        };
        let bytes = encode(entry);
        let size = bytes.len() as u64;
        if size > self.limit {
            return Err(StoreError::TooLarge(size));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let mut state = self.lock();
        if !still_valid() {
            let _ = fs::remove_file(&path);
            return Err(StoreError::Superseded);
        }
        let committed = (|| {
            let tx = self.db.begin_write().map_err(index_err)?;
            tx.open_table(INDEX)
                .map_err(index_err)?
                .insert(key, (id, size))
                .map_err(index_err)?;
            let mut t = tx.open_table(TAGS).map_err(index_err)?;
            if tags.is_empty() {
                t.remove(key).map_err(index_err)?;
            } else {
                t.insert(key, tags.join("\n").as_str()).map_err(index_err)?;
            }
            drop(t);
            tx.commit().map_err(index_err)
        })();
        if let Err(e) = committed {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        if let Some(old) = state.insert(key, id, size) {
            let _ = fs::remove_file(self.path(old.id));
        }
        state.set_tags(key, tags);
        self.evict_to(&mut state, self.limit)
    }

    fn remove_keys(&self, keys: Vec<String>) -> usize {
        let mut state = self.lock();
        let gone: Vec<(String, u64)> = keys
            .into_iter()
            .filter_map(|k| state.take(&k).map(|m| (k, m.id)))
            .collect();
        if gone.is_empty() {
            return 0;
        }
        if let Err(e) = self.delete_rows(gone.iter().map(|g| g.0.as_str())) {
            tracing::warn!(error = %e, "cache: index update failed while purging");
        }
        for (_, id) in &gone {
            let _ = fs::remove_file(self.path(*id));
        }
        gone.len()
    }
}

impl DiskTier {
    /// [`Tier::put`], except that the write is dropped if `still_valid` returns false when
    /// the object is about to be committed (an invalidation that came first must win).
    pub async fn put_if(
        &self,
        key: &str,
        entry: Arc<Entry>,
        tags: Vec<String>,
        still_valid: impl Fn() -> bool + Send + 'static,
    ) -> Result<(), StoreError> {
        let key = key.to_string();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.put(&key, &entry, tags, &still_valid))
            .await
            .unwrap_or_else(|_| Err(StoreError::Index("disk writer task failed".into())))
    }
}

impl DiskTier {
    /// The keys stored with cache tag `tag`.
    pub fn keys_tagged(&self, tag: &str) -> Vec<String> {
        let s = self.inner.lock();
        s.tagged
            .get(tag)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The keys starting with `prefix`.
    pub fn keys_prefixed(&self, prefix: &str) -> Vec<String> {
        let s = self.inner.lock();
        s.entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// Runs blocking disk work off the async threads.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> T + Send + 'static,
    or: T,
) -> T {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .unwrap_or(or)
}

impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Arc<Entry>>> {
        let key = key.to_string();
        Box::pin(blocking(&self.inner, move |i| i.get(&key), None))
    }

    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(self.put_if(key, entry, Vec::new(), || true))
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFut<'a, bool> {
        let key = key.to_string();
        Box::pin(blocking(
            &self.inner,
            move |i| i.remove_keys(vec![key]) > 0,
            false,
        ))
    }

    fn remove_prefix<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, usize> {
        let prefix = prefix.to_string();
        Box::pin(blocking(
            &self.inner,
            move |i| {
                let keys = i
                    .lock()
                    .entries
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                i.remove_keys(keys)
            },
            0,
        ))
    }

    fn stats(&self) -> TierStats {
        let s = self.inner.lock();
        TierStats {
            bytes: s.total,
            entries: s.entries.len() as u64,
            evictions: self.inner.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
