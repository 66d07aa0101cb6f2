//! Puts frames back in the order they entered the classify workers.
//!
//! Several classify threads finish frames out of order; decide must see them in order
//! (N-of-M alarms count consecutive frames). Each frame carries its position (`order`,
//! gap-free from 0); [`Reorder`] holds early arrivals in a ring until the next one in
//! line arrives. The ring is sized for every frame that can be in flight, so in the
//! steady state it never allocates.

/// A ring of frames waiting for their turn.
pub struct Reorder<T> {
    next: u64,
    slots: Vec<Option<T>>,
}

impl<T> Reorder<T> {
    /// `in_flight`: the most frames that can be between the first worker and decide.
    pub fn new(in_flight: usize) -> Self {
        Self {
            next: 0,
            slots: (0..in_flight.max(1)).map(|_| None).collect(),
        }
    }

    /// Takes the frame at position `order` (each position once, none before the next one
    /// due).
    pub fn push(&mut self, order: u64, item: T) {
        debug_assert!(order >= self.next, "frame {order} arrived twice or late");
        let ahead = (order - self.next) as usize;
        if ahead >= self.slots.len() {
            // More in flight than the ring was sized for: grow (and re-place) rather than
            // lose a frame.
            let mut bigger: Vec<Option<T>> =
                (0..(ahead + 1).next_power_of_two()).map(|_| None).collect();
            let old_len = self.slots.len();
            for k in 0..old_len as u64 {
                let pos = self.next + k;
                if let Some(v) = self.slots[(pos % old_len as u64) as usize].take() {
                    let n = bigger.len() as u64;
                    bigger[(pos % n) as usize] = Some(v);
                }
            }
            self.slots = bigger;
        }
        let n = self.slots.len() as u64;
        self.slots[(order % n) as usize] = Some(item);
    }

    /// The next frame in order, if it has arrived.
    pub fn pop(&mut self) -> Option<T> {
        let n = self.slots.len() as u64;
        let item = self.slots[(self.next % n) as usize].take()?;
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_leave_in_order_whatever_order_they_arrive_in() {
        let mut r = Reorder::new(4);
        let mut out = Vec::new();
        for order in [1u64, 0, 3, 2, 4, 6, 5, 7] {
            r.push(order, order);
            while let Some(v) = r.pop() {
                out.push(v);
            }
        }
        assert_eq!(out, (0..8).collect::<Vec<u64>>());
    }

    #[test]
    fn a_frame_further_ahead_than_the_ring_is_kept() {
        let mut r = Reorder::new(2);
        r.push(1, "b");
        r.push(5, "f");
        r.push(3, "d");
        assert_eq!(r.pop(), None, "0 has not arrived");
        r.push(0, "a");
        assert_eq!((r.pop(), r.pop(), r.pop()), (Some("a"), Some("b"), None));
        r.push(2, "c");
        r.push(4, "e");
        let rest: Vec<&str> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(rest, ["c", "d", "e", "f"]);
    }
}
