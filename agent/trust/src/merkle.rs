//! The Merkle tree of a permit batch: RFC 6962 (§2.1) / RFC 9162 (§2.1) with SHA-256.
//!
//! A leaf hash is `SHA-256(0x00 || leaf)`, an interior node `SHA-256(0x01 || left || right)`,
//! so no leaf can pose as a node (second preimages). The tree over `n` leaves splits at the
//! largest power of two below `n`; built bottom-up, that is the same as pairing each level and
//! carrying an odd last node up unchanged (never duplicating it, so two different leaf lists
//! never share a root). An inclusion proof is the RFC's audit path; [`root_from_path`] is
//! RFC 9162 §2.1.3.2, which accepts a path only if it has exactly the length the index and tree
//! size call for.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A whole tree in memory, every level kept, so that any leaf's audit path is at hand.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[0]` are the leaf hashes, the last level is the root alone (absent when empty).
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree over `leaves` (leaf hashes, in order): `n - 1` node hashes.
    pub fn from_leaf_hashes(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [odd] => *odd,
                    _ => unreachable!("chunks(2) yields one or two items"),
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaf.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root (the Merkle Tree Hash); the tree of no leaf has `SHA-256("")`.
    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|top| top.first()) {
            Some(root) if !self.is_empty() => *root,
            _ => Sha256::digest(b"").into(),
        }
    }

    /// The audit path of leaf `index` (RFC 6962 `PATH(m, D[n])`), leaf to root; `None` when the
    /// index is not in the tree.
    pub fn path(&self, index: u64) -> Option<Vec<Hash>> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::new();
        let mut i = index as usize;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            // The odd last node of a level has no sibling: it moves up unchanged.
            if let Some(hash) = level.get(sibling) {
                path.push(*hash);
            }
            i /= 2;
        }
        Some(path)
    }
}

/// The root that `leaf` at `index` in a tree of `size` leaves implies with audit path `path`
/// (RFC 9162 §2.1.3.2); `None` when the index is outside the tree or the path does not have the
/// length that index and size call for.
pub fn root_from_path(leaf: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's definition, transcribed literally, as an independent reference.
    fn mth(leaves: &[&[u8]]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest(b"").into(),
            1 => leaf_hash(leaves[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn hex32(s: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).expect("hex");
        out
    }

    /// The Certificate Transparency reference inputs and the roots of their first 1..=8.
    const INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_reference_vectors() {
        let data: Vec<Vec<u8>> = INPUTS.iter().map(|h| hex::decode(h).unwrap()).collect();
        assert_eq!(
            Tree::from_leaf_hashes(Vec::new()).root(),
            hex32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        for n in 1..=8 {
            let tree = Tree::from_leaf_hashes(data[..n].iter().map(|d| leaf_hash(d)).collect());
            assert_eq!(tree.root(), hex32(ROOTS[n - 1]), "{n} leaves");
        }
    }

    #[test]
    fn every_path_of_every_size_proves_its_leaf_and_nothing_else() {
        for n in 1..=70u64 {
            let data: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
            let tree = Tree::from_leaf_hashes(leaves.clone());
            let root = tree.root();
            assert_eq!(root, mth(&refs), "{n} leaves");
            assert!(tree.path(n).is_none());
            for i in 0..n {
                let path = tree.path(i).unwrap();
                assert_eq!(root_from_path(&leaves[i as usize], i, n, &path), Some(root));
                // Another leaf, another index, a path one hash longer or shorter, or any changed
                // hash: never this root. (The size is not checked here: a batch's count is in
                // its signed header.)
                let other = leaf_hash(b"other");
                assert_ne!(root_from_path(&other, i, n, &path), Some(root));
                for j in (0..n).filter(|&j| j != i) {
                    assert_ne!(
                        root_from_path(&leaves[i as usize], j, n, &path),
                        Some(root),
                        "leaf {i} claimed at {j} of {n}"
                    );
                }
                let mut longer = path.clone();
                longer.push(root);
                assert_eq!(root_from_path(&leaves[i as usize], i, n, &longer), None);
                if !path.is_empty() {
                    assert_eq!(
                        root_from_path(&leaves[i as usize], i, n, &path[..path.len() - 1]),
                        None
                    );
                }
                for k in 0..path.len() {
                    let mut bad = path.clone();
                    bad[k][0] ^= 1;
                    assert_ne!(root_from_path(&leaves[i as usize], i, n, &bad), Some(root));
                }
            }
        }
    }

    #[test]
    fn a_leaf_is_never_a_node() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let mut joined = Vec::new();
        joined.extend_from_slice(&a);
        joined.extend_from_slice(&b);
        assert_ne!(leaf_hash(&joined), node_hash(&a, &b));
    }
}
