//! The group coordinator: Kafka's classic consumer-group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) as a state machine per group.
//!
//! ```text
//! Empty --join--> PreparingRebalance --all members joined / rebalance timeout-->
//! CompletingRebalance --leader's SyncGroup--> Stable --join/leave/session expiry-->
//! PreparingRebalance ...
//! ```
//!
//! Each completed join round is a new generation. The leader (the first member to join,
//! kept while it stays) receives every member's subscription metadata and assigns
//! partitions client-side (range, round-robin, sticky: whatever the clients agree on);
//! the coordinator only hands each member its share. A member that misses its session
//! timeout without a heartbeat is removed and the group rebalances; a member that does
//! not rejoin within the rebalance timeout is dropped from the new generation.
//!
//! Requests that must wait (a JoinGroup until the round completes, a follower's
//! SyncGroup until the leader's) get a [`tokio::sync::oneshot`] receiver. Time is an
//! argument ([`Instant`]), so tests drive it; the broker calls [`Coordinator::tick`]
//! periodically. Committed offsets are not kept here (see the log's `GroupStore`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Kafka error codes the coordinator answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
}

/// Bounds on what clients may ask for.
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 30 * 60 * 1000;
pub const MEMBERS_MAX: usize = 1_000;
pub const GROUPS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader only: every member's id, instance id and metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    fn error(error: i16, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    fn error(error: i16) -> SyncOutcome {
        SyncOutcome { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
    }
}

/// Either an answer now or a receiver for it.
#[derive(Debug)]
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A JoinGroup request, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_heartbeat: Instant,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Option<Instant>,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            rebalance_deadline: None,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        // Followers waiting for an assignment of the old generation must rejoin.
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(SyncOutcome::error(code::REBALANCE_IN_PROGRESS));
            }
        }
        if self.state != GroupState::PreparingRebalance {
            let longest = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
            self.rebalance_deadline = Some(now + longest);
        }
        self.state = GroupState::PreparingRebalance;
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// End the join round: drop members that did not rejoin, start the next generation
    /// and answer every waiting JoinGroup.
    fn complete_join(&mut self, now: Instant) {
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.rebalance_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol_name = None;
            return;
        }
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        // The first of the leader's protocols that every member supports.
        let chosen = self.members.get(&leader).and_then(|l| {
            l.protocols
                .iter()
                .map(|(n, _)| n.clone())
                .find(|n| self.members.values().all(|m| m.protocols.iter().any(|(p, _)| p == n)))
        });
        self.protocol_name = chosen.clone();
        self.state = GroupState::CompletingRebalance;
        let chosen = chosen.unwrap_or_default();
        let members: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m.protocols.iter().find(|(p, _)| *p == chosen).map(|(_, b)| b.clone()).unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.last_heartbeat = now;
            m.assignment = Bytes::new();
            if let Some(tx) = m.join_waiter.take() {
                let _ = tx.send(JoinOutcome {
                    error: code::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader { members.clone() } else { Vec::new() },
                });
            }
        }
    }

    fn remove_member(&mut self, id: &str, now: Instant) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(tx) = m.join_waiter.take() {
                let _ = tx.send(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, id));
            }
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(SyncOutcome::error(code::UNKNOWN_MEMBER_ID));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        if self.members.is_empty() {
            if self.state != GroupState::Empty {
                self.generation += 1;
            }
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.rebalance_deadline = None;
            return;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now),
            GroupState::PreparingRebalance if self.all_joined() => self.complete_join(now),
            _ => {}
        }
    }
}

/// Every group's membership state.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: HashMap<String, Group>,
    next_member: u64,
}

/// A description of a group (DescribeGroups, ListGroups).
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    /// (member id, instance id, metadata of the chosen protocol, assignment)
    pub members: Vec<(String, Option<String>, Bytes, Bytes)>,
}

impl Coordinator {
    pub fn join(&mut self, group_id: &str, req: JoinRequest, now: Instant) -> Reply<JoinOutcome> {
        if group_id.is_empty() {
            return Reply::Now(JoinOutcome::error(code::INVALID_GROUP_ID, &req.member_id));
        }
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&req.session_timeout_ms) {
            return Reply::Now(JoinOutcome::error(code::INVALID_SESSION_TIMEOUT, &req.member_id));
        }
        if req.protocols.is_empty() || req.protocol_type.is_empty() {
            return Reply::Now(JoinOutcome::error(code::INCONSISTENT_GROUP_PROTOCOL, &req.member_id));
        }
        if !self.groups.contains_key(group_id) && self.groups.len() >= GROUPS_MAX {
            return Reply::Now(JoinOutcome::error(code::GROUP_MAX_SIZE_REACHED, &req.member_id));
        }
        let group = self.groups.entry(group_id.to_string()).or_insert_with(Group::new);
        if !group.members.is_empty() {
            if group.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
                return Reply::Now(JoinOutcome::error(code::INCONSISTENT_GROUP_PROTOCOL, &req.member_id));
            }
            let shared = group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(p, _)| req.protocols.iter().any(|(q, _)| q == p)));
            if !shared {
                return Reply::Now(JoinOutcome::error(code::INCONSISTENT_GROUP_PROTOCOL, &req.member_id));
            }
        }
        let member_id = if req.member_id.is_empty() {
            if group.members.len() >= MEMBERS_MAX {
                return Reply::Now(JoinOutcome::error(code::GROUP_MAX_SIZE_REACHED, ""));
            }
            self.next_member += 1;
            let client = if req.client_id.is_empty() { "member" } else { req.client_id.as_str() };
            format!("{client}-{}-{}", self.next_member, now.elapsed().subsec_nanos())
        } else if group.members.contains_key(&req.member_id) {
            req.member_id.clone()
        } else {
            return Reply::Now(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, &req.member_id));
        };
        group.protocol_type = Some(req.protocol_type.clone());
        let (tx, rx) = oneshot::channel();
        let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
            instance_id: None,
            protocols: Vec::new(),
            session_timeout: Duration::ZERO,
            rebalance_timeout: Duration::ZERO,
            last_heartbeat: now,
            assignment: Bytes::new(),
            join_waiter: None,
            sync_waiter: None,
        });
        member.instance_id = req.group_instance_id.clone();
        member.protocols = req.protocols;
        member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        let rebalance_ms = if req.rebalance_timeout_ms > 0 { req.rebalance_timeout_ms } else { req.session_timeout_ms };
        member.rebalance_timeout = Duration::from_millis(rebalance_ms as u64);
        member.last_heartbeat = now;
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, &member_id));
        }
        group.prepare_rebalance(now);
        if group.all_joined() {
            group.complete_join(now);
        }
        Reply::Later(rx)
    }

    pub fn sync(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Reply<SyncOutcome> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Reply::Now(SyncOutcome::error(code::UNKNOWN_MEMBER_ID));
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Reply::Now(SyncOutcome::error(code::UNKNOWN_MEMBER_ID));
        };
        if generation != group.generation {
            return Reply::Now(SyncOutcome::error(code::ILLEGAL_GENERATION));
        }
        member.last_heartbeat = now;
        let ok = |group: &Group, assignment: Bytes| SyncOutcome {
            error: code::NONE,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            assignment,
        };
        match group.state {
            GroupState::Empty | GroupState::PreparingRebalance => {
                Reply::Now(SyncOutcome::error(code::REBALANCE_IN_PROGRESS))
            }
            GroupState::Stable => {
                let a = member.assignment.clone();
                Reply::Now(ok(group, a))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                member.sync_waiter = Some(tx);
                if group.leader.as_deref() == Some(member_id) {
                    let given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    group.state = GroupState::Stable;
                    let out: Vec<(Option<oneshot::Sender<SyncOutcome>>, Bytes)> = group
                        .members
                        .iter_mut()
                        .map(|(id, m)| {
                            m.assignment = given.get(id).cloned().unwrap_or_default();
                            (m.sync_waiter.take(), m.assignment.clone())
                        })
                        .collect();
                    for (tx, a) in out {
                        if let Some(tx) = tx {
                            let _ = tx.send(ok(group, a));
                        }
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    pub fn heartbeat(&mut self, group_id: &str, generation: i32, member_id: &str, now: Instant) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        member.last_heartbeat = now;
        if generation != group.generation {
            return code::ILLEGAL_GENERATION;
        }
        match group.state {
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Remove members; returns each one's error code (UNKNOWN_MEMBER_ID if absent).
    pub fn leave(&mut self, group_id: &str, member_ids: &[String], now: Instant) -> Vec<i16> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![code::UNKNOWN_MEMBER_ID; member_ids.len()];
        };
        member_ids
            .iter()
            .map(|id| {
                if group.members.contains_key(id) {
                    group.remove_member(id, now);
                    code::NONE
                } else {
                    code::UNKNOWN_MEMBER_ID
                }
            })
            .collect()
    }

    /// Whether an OffsetCommit by (`generation`, `member_id`) may proceed. A commit with
    /// generation -1 and no member id comes from a consumer outside the group protocol
    /// (manual assignment) and is accepted while the group has no members.
    pub fn check_commit(&self, group_id: &str, generation: i32, member_id: &str) -> i16 {
        let group = self.groups.get(group_id);
        if generation < 0 && member_id.is_empty() {
            return match group {
                Some(g) if !g.members.is_empty() => code::UNKNOWN_MEMBER_ID,
                _ => code::NONE,
            };
        }
        let Some(group) = group else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if !group.members.contains_key(member_id) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != group.generation {
            return code::ILLEGAL_GENERATION;
        }
        if group.state == GroupState::PreparingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        code::NONE
    }

    /// Expire members whose session timed out and end join rounds whose rebalance
    /// timeout passed. Call it periodically.
    pub fn tick(&mut self, now: Instant) {
        for group in self.groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none() && now.saturating_duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "consumer group member's session expired");
                group.remove_member(&id, now);
            }
            if group.state == GroupState::PreparingRebalance && group.rebalance_deadline.is_some_and(|d| now >= d) {
                group.complete_join(now);
            }
        }
        self.groups.retain(|_, g| !(g.state == GroupState::Empty && g.members.is_empty() && g.generation == 0));
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupInfo> {
        let g = self.groups.get(group_id)?;
        let chosen = g.protocol_name.clone().unwrap_or_default();
        Some(GroupInfo {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_name: chosen.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| {
                    let meta =
                        m.protocols.iter().find(|(p, _)| *p == chosen).map(|(_, b)| b.clone()).unwrap_or_default();
                    (id.clone(), m.instance_id.clone(), meta, m.assignment.clone())
                })
                .collect(),
        })
    }

    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        let mut v: Vec<_> = self
            .groups
            .iter()
            .map(|(n, g)| (n.clone(), g.state, g.protocol_type.clone().unwrap_or_default()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member.into(),
            group_instance_id: None,
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{member}-{p}")))).collect(),
        }
    }

    fn ready<T: std::fmt::Debug>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Later(mut rx) => rx.try_recv().expect("answer should be ready"),
        }
    }

    fn pending<T: std::fmt::Debug>(r: Reply<T>) -> oneshot::Receiver<T> {
        match r {
            Reply::Later(mut rx) => {
                assert!(rx.try_recv().is_err(), "answer should not be ready yet");
                rx
            }
            Reply::Now(t) => panic!("answered at once: {t:?}"),
        }
    }

    #[test]
    fn a_single_member_joins_syncs_and_is_stable() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let j = ready(c.join("g", req("", &["range"]), t));
        assert_eq!((j.error, j.generation, j.protocol_name.as_deref()), (0, 1, Some("range")));
        assert_eq!(j.leader, j.member_id);
        assert_eq!(j.members.len(), 1);
        let s = ready(c.sync("g", 1, &j.member_id, vec![(j.member_id.clone(), Bytes::from_static(b"A"))], t));
        assert_eq!((s.error, &s.assignment[..]), (0, &b"A"[..]));
        assert_eq!(c.heartbeat("g", 1, &j.member_id, t), code::NONE);
        assert_eq!(c.check_commit("g", 1, &j.member_id), code::NONE);
        assert_eq!(c.check_commit("g", 0, &j.member_id), code::ILLEGAL_GENERATION);
        assert_eq!(c.check_commit("g", -1, ""), code::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_second_member_triggers_a_rebalance_and_the_leader_assigns() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a = ready(c.join("g", req("", &["range", "roundrobin"]), t));
        ready(c.sync("g", 1, &a.member_id, vec![(a.member_id.clone(), Bytes::from_static(b"all"))], t));
        // B joins: the round waits for A to rejoin.
        let mut b_rx = pending(c.join("g", req("", &["roundrobin"]), t));
        assert_eq!(c.heartbeat("g", 1, &a.member_id, t), code::REBALANCE_IN_PROGRESS);
        assert_eq!(c.check_commit("g", 1, &a.member_id), code::REBALANCE_IN_PROGRESS);
        let a2 = ready(c.join("g", req(&a.member_id, &["range", "roundrobin"]), t));
        let b = b_rx.try_recv().unwrap();
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(a2.leader, a.member_id, "the leader stays");
        assert_eq!(a2.protocol_name.as_deref(), Some("roundrobin"), "the protocol both support");
        assert_eq!(a2.members.len(), 2);
        assert!(b.members.is_empty(), "followers get no member list");
        assert!(a2.members.iter().any(|(id, _, m)| *id == b.member_id && m.ends_with(b"roundrobin")));
        // The follower's sync waits for the leader's.
        let mut b_sync = pending(c.sync("g", 2, &b.member_id, vec![], t));
        let sa = ready(c.sync(
            "g",
            2,
            &a.member_id,
            vec![
                (a.member_id.clone(), Bytes::from_static(b"p0p1")),
                (b.member_id.clone(), Bytes::from_static(b"p2p3")),
            ],
            t,
        ));
        assert_eq!(&sa.assignment[..], b"p0p1");
        assert_eq!(&b_sync.try_recv().unwrap().assignment[..], b"p2p3");
        // B leaves: A must rejoin and becomes the only member of generation 3.
        assert_eq!(c.leave("g", std::slice::from_ref(&b.member_id), t), vec![0]);
        assert_eq!(c.heartbeat("g", 2, &a.member_id, t), code::REBALANCE_IN_PROGRESS);
        let a3 = ready(c.join("g", req(&a.member_id, &["range", "roundrobin"]), t));
        assert_eq!((a3.generation, a3.members.len()), (3, 1));
    }

    #[test]
    fn silent_members_expire_and_late_joiners_are_dropped() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a = ready(c.join("g", req("", &["range"]), t));
        ready(c.sync("g", 1, &a.member_id, vec![], t));
        let b_rx = pending(c.join("g", req("", &["range"]), t));
        // A never rejoins: after the rebalance timeout (5 s) the round completes without it.
        c.tick(t + Duration::from_secs(4));
        let mut b_rx = b_rx;
        assert!(b_rx.try_recv().is_err());
        c.tick(t + Duration::from_secs(6));
        let b = b_rx.try_recv().unwrap();
        assert_eq!((b.generation, b.leader == b.member_id, b.members.len()), (2, true, 1));
        assert_eq!(c.heartbeat("g", 2, &a.member_id, t), code::UNKNOWN_MEMBER_ID);
        ready(c.sync("g", 2, &b.member_id, vec![], t + Duration::from_secs(6)));
        // B stops heartbeating: its 10 s session expires and the group is empty.
        c.tick(t + Duration::from_secs(17));
        assert_eq!(c.heartbeat("g", 2, &b.member_id, t), code::UNKNOWN_MEMBER_ID);
        assert_eq!(c.describe("g").unwrap().state, GroupState::Empty);
        assert_eq!(c.check_commit("g", -1, ""), code::NONE);
    }

    #[test]
    fn bad_requests_get_their_codes() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        assert_eq!(ready(c.join("g", req("ghost", &["range"]), t)).error, code::UNKNOWN_MEMBER_ID);
        let mut r = req("", &["range"]);
        r.session_timeout_ms = 10;
        assert_eq!(ready(c.join("g", r, t)).error, code::INVALID_SESSION_TIMEOUT);
        let a = ready(c.join("g", req("", &["range"]), t));
        assert_eq!(ready(c.join("g", req("", &["sticky"]), t)).error, code::INCONSISTENT_GROUP_PROTOCOL);
        assert_eq!(ready(c.sync("g", 7, &a.member_id, vec![], t)).error, code::ILLEGAL_GENERATION);
        assert_eq!(c.leave("g", &["nobody".into()], t), vec![code::UNKNOWN_MEMBER_ID]);
    }
}
