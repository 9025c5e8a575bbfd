//! A consistent-hash ring (ketama style). Each server is placed at `POINTS_PER_WEIGHT × weight`
//! points, each the XXH3 hash of its name and the point's number, so a server's place depends
//! only on its own name: adding or removing one server moves only the keys that land on its
//! points (about 1/n of them), and every Gatehouse instance with the same servers maps a key
//! to the same server. A key goes to the first point at or after its own hash; when that
//! server is not eligible the walk goes on clockwise to the next distinct server.

use xxhash_rust::xxh3::xxh3_64;

use super::ServerSpec;

/// Points per unit of weight: enough that shares stay within a few percent of the weights.
const POINTS_PER_WEIGHT: u32 = 160;
/// A pool of heavily weighted servers still gets a bounded ring.
const MAX_POINTS: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Ring {
    /// (hash, server index), sorted by hash.
    points: Vec<(u64, usize)>,
    servers: usize,
}

impl Ring {
    pub fn new(specs: &[ServerSpec]) -> Ring {
        let total_weight: u64 = specs.iter().map(|s| u64::from(s.weight.max(1))).sum();
        // Scale down when the ring would be huge; every server keeps at least one point.
        let per = (MAX_POINTS as u64 / total_weight.max(1)).clamp(1, u64::from(POINTS_PER_WEIGHT));
        let mut points = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let n = u64::from(s.weight.max(1)) * per;
            for k in 0..n {
                let h = xxh3_64(format!("{}-{k}", s.name).as_bytes());
                points.push((h, i));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            servers: specs.len(),
        }
    }

    /// The hash a key is placed at.
    pub fn key_hash(key: &[u8]) -> u64 {
        xxh3_64(key)
    }

    /// The first server clockwise from `key` for which `ok` holds, trying each server once.
    pub fn lookup(&self, key: &[u8], ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = Self::key_hash(key);
        let start = self.points.partition_point(|(p, _)| *p < h);
        let mut seen = vec![false; self.servers];
        let mut distinct = 0;
        for k in 0..self.points.len() {
            let (_, i) = self.points[(start + k) % self.points.len()];
            if seen[i] {
                continue;
            }
            if ok(i) {
                return Some(i);
            }
            seen[i] = true;
            distinct += 1;
            if distinct == self.servers {
                break;
            }
        }
        None
    }
}
