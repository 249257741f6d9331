//! The critical path of a trace, as Jaeger defines it: from the root, the part of the span
//! after its last-finishing child is critical; then that child, from its own end backwards;
//! when a span has no child finishing before the point reached, its remaining part back to its
//! start is critical and the walk returns to its parent at that span's start, looking for the
//! child that finished before it. Children are first clipped to their parent's interval
//! (a child starting after its parent ended is ignored), as Jaeger does.

/// One span of the tree: its parent's index in the same slice (`None`: a root) and its times.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub parent: Option<usize>,
    pub start: u64,
    pub end: u64,
}

/// A critical section of span `span`: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub span: usize,
    pub start: u64,
    pub end: u64,
}

/// The critical sections of the tree under each root, latest first within a root.
pub fn critical_path(nodes: &[Node]) -> Vec<Section> {
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut roots = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        match n.parent {
            Some(p) if p < nodes.len() && p != i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    // Clip top-down: a child's interval within its parent's (dropped if outside).
    let mut clipped: Vec<Option<(u64, u64)>> = vec![None; nodes.len()];
    let mut stack: Vec<usize> = roots.clone();
    for &r in &roots {
        clipped[r] = Some((nodes[r].start, nodes[r].end.max(nodes[r].start)));
    }
    while let Some(i) = stack.pop() {
        let Some((ps, pe)) = clipped[i] else { continue };
        for &c in &children[i] {
            let (s, e) = (nodes[c].start.max(ps), nodes[c].end.min(pe));
            if nodes[c].start <= pe && s <= e {
                clipped[c] = Some((s, e));
                stack.push(c);
            }
        }
    }

    let mut path = Vec::new();
    for &root in &roots {
        walk(root, nodes, &children, &clipped, &mut path);
    }
    path
}

fn walk(
    root: usize,
    nodes: &[Node],
    children: &[Vec<usize>],
    clipped: &[Option<(u64, u64)>],
    path: &mut Vec<Section>,
) {
    let times = |i: usize| clipped[i].unwrap_or((0, 0));
    let mut current = root;
    // Where the walk stands in `current`: its end, or the start of the child it came back from.
    let mut blocked_on: Option<u64> = None;
    // Each step moves strictly back in time or down; bounded anyway against cycles.
    for _ in 0..4 * nodes.len() + 4 {
        let until = blocked_on.unwrap_or(times(current).1);
        let last_finishing = children[current]
            .iter()
            .copied()
            .filter(|&c| clipped[c].is_some())
            .filter(|&c| blocked_on.is_none_or(|b| times(c).1 < b))
            .max_by_key(|&c| times(c).1);
        match last_finishing {
            Some(child) => {
                let from = times(child).1;
                if from < until {
                    path.push(Section {
                        span: current,
                        start: from,
                        end: until,
                    });
                }
                current = child;
                blocked_on = None;
            }
            None => {
                let from = times(current).0;
                if from < until {
                    path.push(Section {
                        span: current,
                        start: from,
                        end: until,
                    });
                }
                if current == root {
                    return;
                }
                let Some(parent) = nodes[current].parent else {
                    return;
                };
                blocked_on = Some(from);
                current = parent;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(parent: Option<usize>, start: u64, end: u64) -> Node {
        Node { parent, start, end }
    }

    fn sections(nodes: &[Node]) -> Vec<(usize, u64, u64)> {
        let mut s: Vec<_> = critical_path(nodes)
            .into_iter()
            .map(|s| (s.span, s.start, s.end))
            .collect();
        s.sort_by_key(|&(_, start, _)| start);
        s
    }

    #[test]
    fn a_chain_is_critical_end_to_end() {
        // curl 0..100 → proxy 10..90 → backend 20..80
        let nodes = [
            node(None, 0, 100),
            node(Some(0), 10, 90),
            node(Some(1), 20, 80),
        ];
        assert_eq!(
            sections(&nodes),
            [
                (0, 0, 10),
                (1, 10, 20),
                (2, 20, 80),
                (1, 80, 90),
                (0, 90, 100)
            ]
        );
    }

    #[test]
    fn parallel_children_only_the_last_finishing_and_what_it_waited_for() {
        // root 0..100; a 10..40, b 20..70 (overlaps a), c 75..90 (after b)
        let nodes = [
            node(None, 0, 100),
            node(Some(0), 10, 40),
            node(Some(0), 20, 70),
            node(Some(0), 75, 90),
        ];
        // c is last; before c started (75) the last to finish is b; before b started (20)
        // nothing finished: a is off the path.
        assert_eq!(
            sections(&nodes),
            [
                (0, 0, 20),
                (2, 20, 70),
                (0, 70, 75),
                (3, 75, 90),
                (0, 90, 100)
            ]
        );
    }

    #[test]
    fn children_are_clipped_to_their_parent() {
        // The child overruns its parent (clock skew across processes); one starts after it.
        let nodes = [
            node(None, 0, 50),
            node(Some(0), 30, 60),
            node(Some(0), 55, 58),
        ];
        assert_eq!(sections(&nodes), [(0, 0, 30), (1, 30, 50)]);
    }
}
