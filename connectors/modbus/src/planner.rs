//! The request planner: which blocks to read so that every tag is polled
//! with as few requests as the protocol allows.
//!
//! Tags of the same function code are sorted by address and merged into one
//! block while the hole between two tags is at most `max_gap` objects and
//! the block stays within `max_per_request` (the protocol allows 125
//! registers or 2000 coils per read). Reading a few unused registers costs
//! less than a round trip per tag.

/// A read: function code, first address, count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Read {
    pub function_code: u8,
    pub address: u16,
    pub count: u16,
}

/// The protocol's largest read of `function_code`.
pub fn protocol_max(function_code: u8) -> u16 {
    if matches!(function_code, 1 | 2) { 2000 } else { 125 }
}

/// Plan the reads that cover `spans` (function code, address, count).
pub fn plan(spans: &[(u8, u16, u16)], max_gap: u16, max_registers: u16) -> Vec<Read> {
    let mut spans: Vec<(u8, u16, u16)> = spans.iter().copied().filter(|s| s.2 > 0).collect();
    spans.sort_unstable();
    let mut out: Vec<Read> = Vec::new();
    for (fc, address, count) in spans {
        let limit = if matches!(fc, 1 | 2) { protocol_max(fc) } else { max_registers.clamp(1, protocol_max(fc)) };
        let end = u32::from(address) + u32::from(count);
        if let Some(last) = out.last_mut()
            && last.function_code == fc
        {
            let last_end = u32::from(last.address) + u32::from(last.count);
            let new_end = last_end.max(end);
            let gap = u32::from(address).saturating_sub(last_end);
            if gap <= u32::from(max_gap) && new_end - u32::from(last.address) <= u32::from(limit) {
                last.count = (new_end - u32::from(last.address)) as u16;
                continue;
            }
        }
        out.push(Read { function_code: fc, address, count: count.min(protocol_max(fc)) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_tags_take_few_reads() {
        // 10 holding registers close together, two far away, a 32-bit value
        // straddling nothing, coils and input registers.
        let mut spans: Vec<(u8, u16, u16)> = (0..10).map(|i| (3, i * 2, 1)).collect();
        spans.extend([(3, 500, 2), (3, 503, 1), (3, 40, 2), (1, 0, 1), (1, 7, 1), (1, 300, 1), (4, 0, 4)]);
        let reads = plan(&spans, 10, 125);
        assert_eq!(
            reads,
            [
                Read { function_code: 1, address: 0, count: 8 },
                Read { function_code: 1, address: 300, count: 1 },
                Read { function_code: 3, address: 0, count: 19 },
                Read { function_code: 3, address: 40, count: 2 },
                Read { function_code: 3, address: 500, count: 4 },
                Read { function_code: 4, address: 0, count: 4 },
            ]
        );
        assert_eq!(spans.len(), 17, "17 tags in 6 requests");
    }

    #[test]
    fn a_block_never_exceeds_the_limit() {
        let spans: Vec<(u8, u16, u16)> = (0..300).map(|i| (3, i, 1)).collect();
        let reads = plan(&spans, 0, 125);
        assert_eq!(reads.iter().map(|r| r.count).collect::<Vec<_>>(), [125, 125, 50]);
        assert_eq!(plan(&spans, 0, 40).len(), 8);
        // Overlapping tags (a 32-bit value and its low word) share a read.
        assert_eq!(plan(&[(3, 10, 2), (3, 11, 1)], 0, 125), [Read { function_code: 3, address: 10, count: 2 }]);
    }
}
