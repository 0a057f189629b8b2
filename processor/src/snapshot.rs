//! State snapshots: `siklus state export` writes every partition of a state
//! dir (profiles, timers, dedup ids, offsets, clocks, aggregators) to one
//! file; `siklus state import` loads it into another state dir, replacing
//! those partitions. A replay's state can so seed a live deployment, which
//! then continues from the replay's end offsets.
//!
//! Format: the magic `SIKLUS-SNAPSHOT-1\n`, then records of a tag byte
//! (`1` = key/value, `0` = end), a u32 big-endian key length, the key, a u32
//! value length and the value. Keys are the store's own versioned layout.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context as _};
use siklus_state::{Batch, Store};

const MAGIC: &[u8] = b"SIKLUS-SNAPSHOT-1\n";

/// What an export or import moved.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SnapshotSummary {
    /// Partitions.
    pub partitions: Vec<u32>,
    /// Keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// Writes every partition of `store` to `path`.
pub fn export(store: &Store, path: &Path) -> anyhow::Result<SnapshotSummary> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    w.write_all(MAGIC)?;
    let mut summary = SnapshotSummary::default();
    let mut err: Option<std::io::Error> = None;
    for p in store.partitions()? {
        summary.partitions.push(p);
        store.export_partition(p, |k, v| {
            if err.is_some() {
                return;
            }
            let r = (|| -> std::io::Result<()> {
                w.write_all(&[1])?;
                w.write_all(&(k.len() as u32).to_be_bytes())?;
                w.write_all(k)?;
                w.write_all(&(v.len() as u32).to_be_bytes())?;
                w.write_all(v)
            })();
            if let Err(e) = r {
                err = Some(e);
            }
            summary.keys += 1;
            summary.bytes += (k.len() + v.len()) as u64;
        })?;
        if let Some(e) = err.take() {
            return Err(e.into());
        }
    }
    w.write_all(&[0])?;
    w.flush()?;
    Ok(summary)
}

fn read_chunk(r: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 64 << 20 {
        bail!("snapshot record of {len} bytes: not a snapshot or corrupt");
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Loads a snapshot into `store`, replacing the partitions it holds.
pub fn import(store: &Store, path: &Path) -> anyhow::Result<SnapshotSummary> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(file);
    let mut magic = vec![0; MAGIC.len()];
    r.read_exact(&mut magic)
        .context("reading the snapshot header")?;
    if magic != MAGIC {
        bail!("{} is not a siklus snapshot", path.display());
    }
    let mut summary = SnapshotSummary::default();
    let mut batch = Batch::new();
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).context("truncated snapshot")?;
        match tag[0] {
            0 => break,
            1 => {}
            t => bail!("snapshot record tag {t}: corrupt"),
        }
        let k = read_chunk(&mut r).context("truncated snapshot")?;
        let v = read_chunk(&mut r).context("truncated snapshot")?;
        // Key layout: [version][table][partition u32 BE]…
        let p = k
            .get(2..6)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .context("snapshot key without a partition")?;
        if !summary.partitions.contains(&p) {
            summary.partitions.push(p);
            batch.drop_partition(p);
        }
        batch.put_raw(&k, &v);
        summary.keys += 1;
        summary.bytes += (k.len() + v.len()) as u64;
    }
    // One atomic write: the import happens whole or not at all.
    store.write(batch)?;
    store.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig, Outputs};
    use crate::model::InteractionEvent;

    #[test]
    fn export_then_import_reproduces_the_partitions() {
        let a = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(a.path(), &Default::default()).unwrap());
        let mut engine = Engine::new(store.clone(), EngineConfig::default());
        let mut out = Outputs::default();
        for p in 0..2u32 {
            engine.assign(p).unwrap();
            for i in 0..20i64 {
                let e = InteractionEvent {
                    event_id: format!("e{p}-{i}"),
                    customer_id: format!("c{}", i % 7),
                    event_type: "page.viewed".into(),
                    occurred_at: 1_700_000_000_000 + i * 86_400_000,
                    ..Default::default()
                };
                engine.process(p, i, Ok(e), &mut out).unwrap();
            }
        }
        engine.commit().unwrap();
        let snap = a.path().join("snap");
        let exported = export(&store, &snap).unwrap();
        assert_eq!(exported.partitions, vec![0, 1]);

        let b = tempfile::tempdir().unwrap();
        let target = Store::open(b.path(), &Default::default()).unwrap();
        // Stale data in the target partition is replaced, not merged.
        let mut stale = Batch::new();
        stale.put_profile(0, "ghost", b"x");
        target.write(stale).unwrap();
        import(&target, &snap).unwrap();
        assert!(target.profile(0, "ghost").unwrap().is_none());
        for p in 0..2 {
            let mut x = Vec::new();
            let mut y = Vec::new();
            store
                .export_partition(p, |k, v| x.push((k.to_vec(), v.to_vec())))
                .unwrap();
            target
                .export_partition(p, |k, v| y.push((k.to_vec(), v.to_vec())))
                .unwrap();
            assert_eq!(x, y);
        }
        assert_eq!(target.offset(1).unwrap(), Some(20));

        std::fs::write(a.path().join("bad"), b"nope").unwrap();
        assert!(import(&target, &a.path().join("bad")).is_err());
    }
}
