//! Bounds-checked little-endian reads: every accessor returns `None` instead of panicking.

/// The `len` bytes at `off`, if they are all inside `b`.
pub(crate) fn slice(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

/// The `N` bytes at `off` as an array.
fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    slice(b, off, N)?.try_into().ok()
}

pub(crate) fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    array(b, off).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    array(b, off).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    array(b, off).map(u64::from_le_bytes)
}

/// A file offset or size from the image, as `usize`.
pub(crate) fn to_usize(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// `v` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(v: usize, align: usize) -> Option<usize> {
    let mask = align.checked_sub(1)?;
    Some(v.checked_add(mask)? & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stay_in_bounds() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 0), Some(0x0201));
        assert_eq!(u32_at(&b, 5), Some(0x0908_0706));
        assert_eq!(u32_at(&b, 6), None);
        assert_eq!(u64_at(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(u64_at(&b, 2), None);
        assert_eq!(u8_at(&b, 9), None);
        assert_eq!(slice(&b, usize::MAX, 2), None);
        assert_eq!(slice(&b, 9, 0), Some(&[][..]));
    }

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(5, 4), Some(8));
        assert_eq!(align_up(8, 4), Some(8));
        assert_eq!(align_up(0, 8), Some(0));
        assert_eq!(align_up(usize::MAX, 4), None);
    }
}
