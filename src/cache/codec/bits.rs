//! Class ids packed in the fewest bits that hold them, for the codecs that
//! store ids (`topkp`, `sampled`): `b = ceil(log2 C)` bits per id (at least
//! 1), so 4 bits at 10 classes, 10 at 1,000, 15 at 32,000 and 17 at 128,000
//! (Megatron's offline logits pack 17-bit ids the same way).
//!
//! Bit order: id `j` occupies bits `j·b .. (j+1)·b` of a little-endian bit
//! stream (stream bit `k` is bit `k mod 8` of byte `k / 8`), least
//! significant bit first. The stream is padded with zero bits to a whole
//! byte; a decoder refuses nonzero padding and ids `>= C`.

/// Bits per class id for `classes` classes: the fewest that hold `0..classes`.
pub fn id_bits(classes: usize) -> u32 {
    let top = classes.saturating_sub(1).max(1) as u64;
    64 - top.leading_zeros()
}

/// Bytes of `count` packed ids of `bits` bits each.
pub fn packed_len(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Appends `ids` packed in `bits` bits each (each id must fit; the caller's
/// ids are class ids below `2^bits`).
pub fn pack(ids: impl IntoIterator<Item = u32>, bits: u32, out: &mut Vec<u8>) {
    let mut acc = 0u64;
    let mut held = 0u32;
    for id in ids {
        acc |= (id as u64 & ((1u64 << bits) - 1)) << held;
        held += bits;
        while held >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            held -= 8;
        }
    }
    if held > 0 {
        out.push(acc as u8);
    }
}

/// Reads `count` ids of `bits` bits from `bytes` (exactly
/// [`packed_len`]`(count, bits)` long), calling `each(j, id)` in order.
/// Refuses ids `>= classes` and nonzero padding bits; the message says which.
pub fn unpack(
    bytes: &[u8],
    count: usize,
    bits: u32,
    classes: usize,
    mut each: impl FnMut(usize, u32) -> Result<(), String>,
) -> Result<(), String> {
    debug_assert_eq!(bytes.len(), packed_len(count, bits));
    let mask = (1u64 << bits) - 1;
    let mut acc = 0u64;
    let mut held = 0u32;
    let mut next = bytes.iter();
    for j in 0..count {
        while held < bits {
            acc |= (*next.next().unwrap_or(&0) as u64) << held;
            held += 8;
        }
        let id = (acc & mask) as u32;
        acc >>= bits;
        held -= bits;
        if id as usize >= classes {
            return Err(format!(
                "id {j} names class {id}, but the cache has {classes} classes"
            ));
        }
        each(j, id)?;
    }
    if acc != 0 || next.next().is_some() {
        return Err("the padding bits after the last id are not zero".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn widths() {
        assert_eq!(id_bits(1), 1);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(10), 4);
        assert_eq!(id_bits(16), 4);
        assert_eq!(id_bits(17), 5);
        assert_eq!(id_bits(1000), 10);
        assert_eq!(id_bits(32_000), 15);
        assert_eq!(id_bits(1 << 17), 17);
        assert_eq!(id_bits(128_000), 17);
        assert_eq!(id_bits(256_000), 18);
        assert_eq!(id_bits(1 << 24), 24);
        assert_eq!(packed_len(3, 4), 2);
        assert_eq!(packed_len(20, 17), 43);
    }

    #[test]
    fn refuses_out_of_range_ids_and_padding() {
        let mut b = Vec::new();
        pack([3, 9], 4, &mut b);
        assert_eq!(b, [0x93]);
        let e = unpack(&b, 2, 4, 9, |_, _| Ok(())).unwrap_err();
        assert!(e.contains("class 9"), "{e}");
        let mut b = Vec::new();
        pack([5], 4, &mut b);
        b[0] |= 0x80;
        let e = unpack(&b, 1, 4, 10, |_, _| Ok(())).unwrap_err();
        assert!(e.contains("padding"), "{e}");
    }

    proptest! {
        #[test]
        fn round_trip(classes in 1usize..300_000, raw in prop::collection::vec(any::<u32>(), 0..60)) {
            let bits = id_bits(classes);
            let ids: Vec<u32> = raw.iter().map(|r| r % classes as u32).collect();
            let mut b = Vec::new();
            pack(ids.iter().copied(), bits, &mut b);
            prop_assert_eq!(b.len(), packed_len(ids.len(), bits));
            let mut got = Vec::new();
            unpack(&b, ids.len(), bits, classes, |j, id| { assert_eq!(j, got.len()); got.push(id); Ok(()) }).unwrap();
            prop_assert_eq!(got, ids);
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..40), classes in 1usize..70_000, count in 0usize..30) {
            let bits = id_bits(classes);
            let len = packed_len(count, bits);
            let mut b = bytes;
            b.resize(len, 0xA5);
            let _ = unpack(&b, count, bits, classes, |_, _| Ok(()));
        }
    }
}
