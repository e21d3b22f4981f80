//! The key's hashes: a multiply-xor hash of a few words (the classifier's compacted
//! keys, the MAC table) and a folded-multiply hash of a whole key (the exact-match cache).

use super::KEY_WORDS;

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Final avalanche of a word hash, so both the low bits (bucket index) and the high bits
/// (hashbrown's tag) depend on every input bit.
#[inline(always)]
pub(crate) fn finish_hash(h: u64) -> u64 {
    let h = (h ^ (h >> 32)).wrapping_mul(K);
    h ^ (h >> 29)
}

const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;

/// Multiply-xor hash (Fx-style, one lane) of a sequence of words. Used for the
/// classifier's compacted masked keys, which are usually 1–6 words.
#[inline(always)]
pub fn hash_word_iter(words: impl Iterator<Item = u64>) -> u64 {
    let mut h = HASH_SEED;
    for w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    finish_hash(h)
}

/// [`hash_word_iter`] over a slice.
#[inline(always)]
pub fn hash_words(words: &[u64]) -> u64 {
    hash_word_iter(words.iter().copied())
}

/// Per-pair constants of [`hash_full`] (digits of pi), so that moving a value from one
/// word pair to another changes the hash.
const PAIR_SEEDS: [u64; KEY_WORDS] = [
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
    0x9216_d5d9_8979_fb1b,
    0xd131_0ba6_98df_b5ac,
    0x2ffd_72db_d01a_dfb7,
    0xb8e1_afed_6a26_7e96,
    0xba7c_9045_f12c_7f99,
    0x24a1_9947_b391_6cf7,
    0x0801_f2e2_858e_fc16,
    0x6369_20d8_7157_4e69,
    0xa458_fea3_f493_3d7e,
    0x0d95_748f_728e_b658,
    0x718b_cd58_8215_4aee,
    0x7b54_a41d_c25a_59b5,
    0x9c30_d539_2af2_6013,
];

/// 64×64→128-bit multiply folded to 64 bits (the core of foldhash/wyhash).
#[inline(always)]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Hash of a full key's words, optionally masked: one folded multiply per pair of words,
/// all independent of each other, so the 20 words cost ten multiplies in parallel.
#[inline(always)]
pub(super) fn hash_full(w: &[u64; KEY_WORDS], m: Option<&[u64; KEY_WORDS]>) -> u64 {
    let mut acc = HASH_SEED;
    for p in 0..KEY_WORDS / 2 {
        let (a, b) = match m {
            Some(m) => (w[2 * p] & m[2 * p], w[2 * p + 1] & m[2 * p + 1]),
            None => (w[2 * p], w[2 * p + 1]),
        };
        acc = acc.wrapping_add(folded_mul(a ^ PAIR_SEEDS[2 * p], b ^ PAIR_SEEDS[2 * p + 1]));
    }
    finish_hash(acc)
}
