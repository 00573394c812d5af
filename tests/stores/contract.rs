//! One contract for the state store, run against both backends (STYLE.md: "the memory and Redis backends pass the
//! same behaviour tests"). Each contract item is a plain async function that takes a [`Backend`] (the `Store`
//! face, its name and its clock) and checks one operation as `store::state` and `store` document it; each
//! `#[tokio::test]` runs it on a fresh in-memory store and on a fresh `RedisStore` over a `redis-server` of its
//! own, naming the backend in every assertion.
//!
//! The atomic operations (`redeem_code`, `replace_refresh_family`, `claim_sign_in`, `claim_assertion`) are raced
//! by [`RACERS`] tasks released together on a multi-threaded runtime: exactly one must win every round.
//!
//! Where the backends differ by design, each is held to its own documented answer: the memory store counts every
//! client against `max_clients` and Redis only unused registrations; `count_request` and `shared_route_token` do
//! nothing in memory; a revoked grant's refresh family may still be read from memory (with the grant flagged
//! revoked, which every caller checks) until the sweeper runs, while Redis forgets it at once.
//!
//! A missing `redis-server` fails these tests ([`TestRedis::start`] panics), on CI or not: never a skip.

use std::future::Future;
use std::sync::Arc;

use dcr_proxy::clock::{Clock, UnixTime};
use dcr_proxy::crypto::{random_token, TokenHash};
use dcr_proxy::endpoint::LimitClass;
use dcr_proxy::rate_limit::Source;
use dcr_proxy::store::redis::RedisStore;
use dcr_proxy::store::{
    AccessToken, AuthorizationCode, AuthorizationRequest, Client, CodeRedemption, FamilyId, Grant, Identity,
    InteractionRequirement, MemoryStore, RefreshFamily, RefreshTokenName, Rotation, Store, StoreError,
    UpstreamCredential, UpstreamLogin, UpstreamTokens,
};
use tokio::sync::Barrier;

use crate::common::{redis_config, TestRedis};

/// Tasks in each race, and races per atomicity test.
const RACERS: usize = 8;
const ROUNDS: usize = 5;

/// The clocks' start (both backends read their own manual clock, started here).
const START: UnixTime = 1_700_000_000;

const REDIRECT: &str = "https://app.example/cb";

/// A store under test, named in every assertion message.
struct Backend {
    name: &'static str,
    store: Arc<Store>,
    clock: Clock,
    /// The Redis backend's server, killed when the test ends.
    _redis: Option<TestRedis>,
}

impl Backend {
    fn now(&self) -> UnixTime {
        self.clock.now()
    }
}

/// A fresh in-memory store and a fresh Redis store on a `redis-server` of its own.
async fn backends() -> [Backend; 2] {
    let memory = Store::Memory(Arc::new(MemoryStore::new()));
    let redis = TestRedis::start().await;
    let config = redis_config(&redis.url(), "");
    let clock = Clock::manual(START);
    let store = config.store.redis.as_ref().expect("a [store] of backend redis");
    let shared = RedisStore::connect(store, clock.clone(), config.registration.unused_client_ttl)
        .await
        .expect("the Redis store connects");
    [
        Backend { name: "memory", store: Arc::new(memory), clock: Clock::manual(START), _redis: None },
        Backend { name: "redis", store: Arc::new(Store::Redis(shared)), clock, _redis: Some(redis) },
    ]
}

/// A name no other test or backend uses.
fn fresh(what: &str) -> String {
    format!("{what}-{}", random_token())
}

fn login(sub: &str) -> UpstreamLogin {
    UpstreamLogin {
        credential: UpstreamCredential::Local,
        identity: Identity { sub: sub.into(), ..Identity::default() },
    }
}

fn code_for(client_id: &str, sub: &str, expires_at: UnixTime) -> AuthorizationCode {
    let request = AuthorizationRequest {
        client_id: client_id.into(),
        redirect_uri: REDIRECT.into(),
        redirect_uri_explicit: true,
        state: None,
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        scope: vec!["read".into()],
        resource: None,
    };
    AuthorizationCode { request, expires_at, login: login(sub) }
}

/// Registers a public client from one source.
async fn add_client(b: &Backend, client_id: &str) {
    let client = Client::public(client_id, vec![REDIRECT.into()], b.now());
    b.store.add_client(client, Source::of_ip([192, 0, 2, 1].into())).await.expect(b.name);
}

/// Starts a grant of `client_id` for `sub` (scope `read write`), as a code redemption does, with an access token
/// valid for an hour: the grant and the token.
async fn granted(b: &Backend, client_id: &str, sub: &str) -> (Arc<Grant>, String) {
    let grant = Grant::new(client_id.into(), vec!["read".into(), "write".into()], None, login(sub), b.now());
    b.store.start_grant(grant.clone(), TokenHash::of(&fresh("code")), b.now() + 600).await.expect(b.name);
    let access = fresh("at");
    b.store.add_access_token(&access, AccessToken::new(grant.clone(), b.now() + 3600)).await.expect(b.name);
    (grant, access)
}

/// Generation `generation` of family `id` of `grant`, rotated from `previous`: the record and its current token.
fn family_at(
    grant: &Arc<Grant>,
    id: FamilyId,
    generation: u32,
    previous: Option<&str>,
    now: UnixTime,
) -> (RefreshFamily, String) {
    let token = RefreshTokenName { family: id, generation }.mint();
    let rotated = previous.map(|p| Box::new(Rotation { hash: TokenHash::of(p), at: now, sealed_successor: vec![] }));
    let record = RefreshFamily {
        grant: grant.clone(),
        generation,
        current: TokenHash::of(&token),
        expires_at: now + 86_400,
        rotated,
    };
    (record, token)
}

/// Starts a refresh family of `grant` at generation 0: its key, id and current token.
async fn new_family(b: &Backend, grant: &Arc<Grant>) -> (TokenHash, FamilyId, String) {
    let id = FamilyId::random();
    let (record, token) = family_at(grant, id, 0, None, b.now());
    b.store.add_refresh_family(id.hash(), record, &token).await.expect(b.name);
    (id.hash(), id, token)
}

/// Whether a bearer is served (`access` answers only for a live token of a grant not revoked).
async fn serves(b: &Backend, access: &str, now: UnixTime) -> bool {
    b.store.access(access, now).await.expect(b.name).is_some()
}

/// Whether a refresh token is recognised for a grant that is not revoked (the callers check the flag).
async fn refresh_serves(b: &Backend, token: &str) -> bool {
    b.store.refresh_token(token).await.expect(b.name).is_some_and(|(g, _, _)| !g.is_revoked())
}

/// Runs [`RACERS`] copies of `racer` at once, released together by a barrier (the runtime must be multi-threaded
/// for the memory backend to race at all): what each returned.
async fn race<T, Fut>(store: &Arc<Store>, racer: impl Fn(Arc<Store>) -> Fut) -> Vec<Result<T, StoreError>>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (barrier, run) = (barrier.clone(), racer(store.clone()));
            tokio::spawn(async move {
                barrier.wait().await;
                run.await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("a racer panicked"));
    }
    results
}

/// One test of a contract item: `$check(backend, $args…)` on each backend in turn, on a multi-threaded runtime (so
/// that the races of [`race`] run in parallel on the memory backend too).
macro_rules! contract_test {
    ($name:ident, $check:ident $(, $arg:expr)*) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for b in &backends().await {
                $check(b $(, $arg)*).await;
            }
        }
    };
}

// ---- 1. clients ------------------------------------------------------------------------------------------------

async fn clients_contract(b: &Backend) {
    let on = b.name;
    let (id, other) = (fresh("client"), fresh("client"));
    assert!(b.store.client(&id).await.expect(on).is_none(), "{on}: no client before it registers");
    assert!(!b.store.has_client(&id).await.expect(on), "{on}");
    add_client(b, &id).await;
    add_client(b, &other).await;
    let read = b.store.client(&id).await.expect(on).unwrap_or_else(|| panic!("{on}: the client added"));
    assert_eq!((&read.client_id, &read.redirect_uris[..]), (&id, &[REDIRECT.to_owned()][..]), "{on}: as added");
    assert!(b.store.has_client(&id).await.expect(on), "{on}: has_client after add_client");

    let renamed = Client { client_name: Some("Renamed".into()), ..Client::public(id.clone(), vec![], b.now()) };
    b.store.put_client(renamed).await.expect(on);
    let read = b.store.client(&id).await.expect(on).unwrap_or_else(|| panic!("{on}: the client replaced"));
    assert_eq!(read.client_name.as_deref(), Some("Renamed"), "{on}: put_client replaces the metadata");
    assert!(read.redirect_uris.is_empty(), "{on}: put_client replaces the whole record");

    let listed: Vec<String> = b.store.list_clients().await.expect(on).iter().map(|c| c.client_id.clone()).collect();
    assert!(listed.contains(&id) && listed.contains(&other), "{on}: list_clients lists both: {listed:?}");

    let (mine, my_access) = granted(b, &id, "alice").await;
    let (_, their_access) = granted(b, &other, "alice").await;
    let (_, _, my_refresh) = new_family(b, &mine).await;
    assert!(serves(b, &my_access, b.now()).await, "{on}: the client's token works before it is revoked");
    b.store.revoke_client(&id).await.expect(on);
    assert!(b.store.client(&id).await.expect(on).is_none(), "{on}: a revoked client is gone");
    assert!(!b.store.has_client(&id).await.expect(on), "{on}");
    let listed: Vec<String> = b.store.list_clients().await.expect(on).iter().map(|c| c.client_id.clone()).collect();
    assert!(!listed.contains(&id) && listed.contains(&other), "{on}: list_clients after the revocation: {listed:?}");
    assert!(!serves(b, &my_access, b.now()).await, "{on}: revoking a client ends its grants' access tokens");
    assert!(!refresh_serves(b, &my_refresh).await, "{on}: … and their refresh tokens");
    assert!(b.store.grant(mine.id).await.expect(on).is_none(), "{on}: … and the grants themselves");
    assert!(serves(b, &their_access, b.now()).await, "{on}: another client's grant is untouched");
}

contract_test!(clients_are_added_read_replaced_listed_and_revoked_with_their_grants, clients_contract);

// ---- 2. codes --------------------------------------------------------------------------------------------------

async fn code_redemption_contract(b: &Backend) {
    let on = b.name;
    let (client_id, secret) = (fresh("client"), fresh("code"));
    b.store.issue_code(&secret, code_for(&client_id, "alice", b.now() + 600)).await.expect(on);
    match b.store.redeem_code(&secret).await.expect(on) {
        CodeRedemption::Taken(code) => {
            assert_eq!(code.request.client_id, client_id, "{on}: the code's request comes back");
            assert_eq!((code.login.identity.sub.as_str(), code.expires_at), ("alice", b.now() + 600), "{on}");
        }
        other => panic!("{on}: the first redemption takes the code, got {other:?}"),
    }
    let again = b.store.redeem_code(&secret).await.expect(on);
    assert!(matches!(again, CodeRedemption::Unknown), "{on}: taken out before its grant starts: {again:?}");
    let grant = Grant::new(client_id, vec!["read".into()], None, login("alice"), b.now());
    b.store.start_grant(grant.clone(), TokenHash::of(&secret), b.now() + 600).await.expect(on);
    let replay = b.store.redeem_code(&secret).await.expect(on);
    assert!(
        matches!(replay, CodeRedemption::Spent(id) if id == grant.id),
        "{on}: a replay names the grant: {replay:?}"
    );
    let never = b.store.redeem_code(&fresh("code")).await.expect(on);
    assert!(matches!(never, CodeRedemption::Unknown), "{on}: a code never issued: {never:?}");
}

contract_test!(a_code_is_taken_once_and_its_replay_names_the_grant_it_started, code_redemption_contract);

async fn concurrent_redemption_contract(b: &Backend) {
    let on = b.name;
    for round in 0..ROUNDS {
        let secret = fresh("code");
        b.store.issue_code(&secret, code_for(&fresh("client"), "alice", b.now() + 600)).await.expect(on);
        let results = race(&b.store, |store| {
            let secret = secret.clone();
            async move { store.redeem_code(&secret).await }
        })
        .await;
        let results: Vec<CodeRedemption> = results.into_iter().map(|r| r.expect(on)).collect();
        let taken = results.iter().filter(|r| matches!(r, CodeRedemption::Taken(_))).count();
        assert_eq!(taken, 1, "{on}, round {round}: one of {RACERS} concurrent redemptions takes the code: {results:?}");
    }
}

contract_test!(concurrent_redemptions_of_one_code_take_it_exactly_once, concurrent_redemption_contract);

// ---- 3. access tokens ------------------------------------------------------------------------------------------

async fn access_token_contract(b: &Backend) {
    let on = b.name;
    let (client_id, now) = (fresh("client"), b.now());
    let (grant, _) = granted(b, &client_id, "alice").await;
    let secret = fresh("at");
    let token = AccessToken { grant: grant.clone(), expires_at: now + 60, scope: Arc::from("read") };
    b.store.add_access_token(&secret, token).await.expect(on);

    let (found, scope) = b.store.access(&secret, now).await.expect(on).unwrap_or_else(|| panic!("{on}: live token"));
    assert_eq!((found.id, &*scope), (grant.id, "read"), "{on}: the token's grant and its own (narrower) scope");
    let hash = TokenHash::of(&secret);
    let record = b.store.access_token_record(&hash).await.expect(on);
    let (found, expires_at, scope) = record.unwrap_or_else(|| panic!("{on}: the token's record"));
    assert_eq!((found.id, expires_at, &*scope), (grant.id, now + 60, "read"), "{on}: access_token_record");
    assert!(b.store.access(&fresh("at"), now).await.expect(on).is_none(), "{on}: a token never issued");

    assert!(serves(b, &secret, now + 59).await, "{on}: live until its expiry");
    assert!(!serves(b, &secret, now + 60).await, "{on}: not served at its expiry");
    assert!(!serves(b, &secret, now + 3600).await, "{on}: nor after");
    let record = b.store.access_token_record(&hash).await.expect(on);
    assert_eq!(record.map(|r| r.1), Some(now + 60), "{on}: the record is read live or not (introspection)");

    let stranger = fresh("client");
    assert!(!b.store.revoke_access_token(&hash, &stranger).await.expect(on), "{on}: another client cannot revoke it");
    assert!(serves(b, &secret, now).await, "{on}: nothing removed by another client's attempt");
    assert!(b.store.revoke_access_token(&hash, &client_id).await.expect(on), "{on}: its own client revokes it");
    assert!(!serves(b, &secret, now).await, "{on}: a revoked token is not served");
    assert!(b.store.access_token_record(&hash).await.expect(on).is_none(), "{on}: its record is gone");
    assert!(!b.store.revoke_access_token(&hash, &client_id).await.expect(on), "{on}: nothing left to revoke");
    assert!(b.store.grant(grant.id).await.expect(on).is_some(), "{on}: revoking a token leaves its grant");
}

contract_test!(an_access_token_serves_its_grant_until_expiry_and_only_its_client_revokes_it, access_token_contract);

/// Remove-if-owner is atomic: of concurrent revocations of one token by its client, one removes it (`/revoke`
/// answers from it). The Redis backend answered `true` to every one before the `DEL`'s count decided.
async fn concurrent_revocation_contract(b: &Backend) {
    let on = b.name;
    for round in 0..ROUNDS {
        let client_id = fresh("client");
        let (grant, _) = granted(b, &client_id, "alice").await;
        let secret = fresh("at");
        let token = AccessToken { grant, expires_at: b.now() + 60, scope: Arc::from("read") };
        b.store.add_access_token(&secret, token).await.expect(on);
        let hash = TokenHash::of(&secret);
        let results = race(&b.store, |store| {
            let client_id = client_id.clone();
            async move { store.revoke_access_token(&hash, &client_id).await }
        })
        .await;
        let removed = results.into_iter().map(|r| r.expect(on)).filter(|removed| *removed).count();
        assert_eq!(removed, 1, "{on}, round {round}: one of {RACERS} concurrent revocations removes the token");
    }
}

contract_test!(concurrent_revocations_of_one_token_remove_it_exactly_once, concurrent_revocation_contract);

// ---- 4. refresh families ---------------------------------------------------------------------------------------

async fn refresh_family_contract(b: &Backend) {
    let on = b.name;
    let (grant, _) = granted(b, &fresh("client"), "alice").await;
    let (key, id, first) = new_family(b, &grant).await;
    let read = b.store.refresh_family(&key, &first).await.expect(on).unwrap_or_else(|| panic!("{on}: the family"));
    assert_eq!((read.generation, read.current, read.grant.id), (0, TokenHash::of(&first), grant.id), "{on}");
    let current = b.store.refresh_token(&first).await.expect(on);
    assert_eq!(current.map(|(g, _, current)| (g.id, current)), Some((grant.id, true)), "{on}: the current token");

    let (next, second) = family_at(&grant, id, 1, Some(&first), b.now());
    assert!(b.store.replace_refresh_family(&key, 0, next, &second).await.expect(on), "{on}: the right generation");
    let read = b.store.refresh_family(&key, &second).await.expect(on).unwrap_or_else(|| panic!("{on}: rotated"));
    assert_eq!((read.generation, read.current), (1, TokenHash::of(&second)), "{on}: the replacement was written");
    let rotated = b.store.refresh_token(&first).await.expect(on);
    assert_eq!(rotated.map(|(g, _, current)| (g.id, current)), Some((grant.id, false)), "{on}: the token just rotated");

    let (stale, third) = family_at(&grant, id, 1, Some(&first), b.now());
    assert!(!b.store.replace_refresh_family(&key, 0, stale, &third).await.expect(on), "{on}: a stale generation");
    let read = b.store.refresh_family(&key, &second).await.expect(on).unwrap_or_else(|| panic!("{on}: kept"));
    assert_eq!((read.generation, read.current), (1, TokenHash::of(&second)), "{on}: nothing written on a stale CAS");
    assert!(b.store.refresh_token(&third).await.expect(on).is_none(), "{on}: the loser's token is unknown");

    let nowhere = FamilyId::random();
    let (orphan, token) = family_at(&grant, nowhere, 1, None, b.now());
    let created = b.store.replace_refresh_family(&nowhere.hash(), 0, orphan, &token).await.expect(on);
    assert!(!created, "{on}: a replacement does not create a family");
    assert!(b.store.refresh_family(&nowhere.hash(), &token).await.expect(on).is_none(), "{on}: unknown family");
}

contract_test!(a_refresh_family_is_replaced_only_from_the_generation_it_holds, refresh_family_contract);

async fn concurrent_rotation_contract(b: &Backend) {
    let on = b.name;
    let (grant, _) = granted(b, &fresh("client"), "alice").await;
    for round in 0..ROUNDS {
        let (key, id, first) = new_family(b, &grant).await;
        let now = b.now();
        let results = race(&b.store, |store| {
            let (next, token) = family_at(&grant, id, 1, Some(&first), now);
            async move { Ok((store.replace_refresh_family(&key, 0, next, &token).await?, token)) }
        })
        .await;
        let winners: Vec<String> = results.into_iter().map(|r| r.expect(on)).filter(|w| w.0).map(|w| w.1).collect();
        assert_eq!(winners.len(), 1, "{on}, round {round}: one of {RACERS} replacements of generation 0 wins");
        let read = b.store.refresh_family(&key, &winners[0]).await.expect(on);
        let read = read.unwrap_or_else(|| panic!("{on}, round {round}: the winner's token reads its family"));
        assert_eq!(read.current, TokenHash::of(&winners[0]), "{on}, round {round}: the family holds the winner's");
    }
}

contract_test!(concurrent_replacements_of_one_generation_rotate_the_family_exactly_once, concurrent_rotation_contract);

// ---- 5. single-use claims --------------------------------------------------------------------------------------

/// The two set-if-absent records: sign-in tickets (consent forms, IdP states) and client assertions (`jti`).
#[derive(Clone, Copy, Debug)]
enum Ticket {
    SignIn,
    Assertion,
}

async fn claim(
    store: &Store,
    kind: Ticket,
    key: TokenHash,
    expires_at: UnixTime,
    now: UnixTime,
) -> Result<bool, StoreError> {
    match kind {
        Ticket::SignIn => store.claim_sign_in(key, expires_at, now).await,
        Ticket::Assertion => store.claim_assertion(key, expires_at, now).await,
    }
}

async fn claim_contract(b: &Backend, kind: Ticket) {
    let on = b.name;
    let (key, now) = (TokenHash::of(&fresh("ticket")), b.now());
    assert!(!b.store.sign_in_used(&key).await.expect(on), "{on}: {kind:?} unused before its claim");
    assert!(claim(&b.store, kind, key, now + 600, now).await.expect(on), "{on}: the first {kind:?} claim wins");
    assert!(!claim(&b.store, kind, key, now + 600, now).await.expect(on), "{on}: a second {kind:?} claim loses");
    let used = b.store.sign_in_used(&key).await.expect(on);
    match kind {
        Ticket::SignIn => assert!(used, "{on}: sign_in_used after the claim"),
        Ticket::Assertion => assert!(!used, "{on}: an assertion is not a sign-in ticket"),
    }
    let other = TokenHash::of(&fresh("ticket"));
    assert!(claim(&b.store, kind, other, now + 600, now).await.expect(on), "{on}: another {kind:?} is its own");
}

async fn concurrent_claim_contract(b: &Backend, kind: Ticket) {
    let on = b.name;
    for round in 0..ROUNDS {
        let (key, now) = (TokenHash::of(&fresh("ticket")), b.now());
        let results = race(&b.store, |store| async move { claim(&store, kind, key, now + 600, now).await }).await;
        let wins = results.into_iter().map(|r| r.expect(on)).filter(|won| *won).count();
        assert_eq!(wins, 1, "{on}, round {round}: one of {RACERS} concurrent {kind:?} claims wins");
    }
}

contract_test!(a_sign_in_ticket_is_claimed_once_and_then_reads_as_used, claim_contract, Ticket::SignIn);

contract_test!(concurrent_claims_of_one_sign_in_ticket_win_exactly_once, concurrent_claim_contract, Ticket::SignIn);

contract_test!(a_client_assertion_is_claimed_once, claim_contract, Ticket::Assertion);

contract_test!(
    concurrent_claims_of_one_client_assertion_win_exactly_once,
    concurrent_claim_contract,
    Ticket::Assertion
);

// ---- 6. revoking grants and users ------------------------------------------------------------------------------

async fn revoke_grant_contract(b: &Backend) {
    let on = b.name;
    let client_id = fresh("client");
    let (grant, access) = granted(b, &client_id, "alice").await;
    let (other, other_access) = granted(b, &client_id, "alice").await;
    let (key, _, refresh) = new_family(b, &grant).await;
    assert!(serves(b, &access, b.now()).await && refresh_serves(b, &refresh).await, "{on}: before the revocation");
    b.store.revoke_grant(grant.id).await.expect(on);
    assert!(!serves(b, &access, b.now()).await, "{on}: a revoked grant's access token is refused");
    assert!(!refresh_serves(b, &refresh).await, "{on}: a revoked grant's refresh token is refused");
    let family = b.store.refresh_family(&key, &refresh).await.expect(on);
    assert!(family.is_none_or(|f| f.grant.is_revoked()), "{on}: its family reads as gone or revoked");
    assert!(b.store.grant(grant.id).await.expect(on).is_none(), "{on}: grant() no longer finds it");
    let listed = b.store.list_grants().await.expect(on);
    assert!(!listed.iter().any(|g| g.id == grant.id), "{on}: list_grants no longer lists it");
    assert!(listed.iter().any(|g| g.id == other.id), "{on}: the client's other grant is listed");
    assert!(serves(b, &other_access, b.now()).await, "{on}: the client's other grant is untouched");
}

contract_test!(a_revoked_grant_serves_neither_its_access_nor_its_refresh_tokens, revoke_grant_contract);

async fn revoke_user_contract(b: &Backend) {
    let on = b.name;
    let (alice, bob) = (fresh("alice"), fresh("bob"));
    let (first, first_access) = granted(b, &fresh("client"), &alice).await;
    let (second, second_access) = granted(b, &fresh("client"), &alice).await;
    let (_, bob_access) = granted(b, &fresh("client"), &bob).await;
    let mut revoked = b.store.revoke_user(&alice).await.expect(on);
    revoked.sort_by_key(|id| id.0);
    let mut expected = vec![first.id, second.id];
    expected.sort_by_key(|id| id.0);
    assert_eq!(revoked, expected, "{on}: revoke_user names every grant of the subject, whatever the client");
    assert!(!serves(b, &first_access, b.now()).await && !serves(b, &second_access, b.now()).await, "{on}");
    assert!(serves(b, &bob_access, b.now()).await, "{on}: another subject's grant is untouched");
    assert!(b.store.revoke_user(&alice).await.expect(on).is_empty(), "{on}: nothing left to revoke");
}

contract_test!(revoking_a_user_revokes_every_grant_of_that_subject_and_no_other, revoke_user_contract);

// ---- 7. interaction requirements -------------------------------------------------------------------------------

async fn interaction_contract(b: &Backend) {
    let on = b.name;
    let (client_id, now) = (fresh("client"), b.now());
    let (alice, bob) = (fresh("person"), fresh("person"));
    let requirement = InteractionRequirement {
        aadsts: Some(50076),
        claims: Some(r#"{"access_token":{"acrs":{"essential":true,"values":["c1"]}}}"#.into()),
        login_hint: None,
        expires_at: now + 600,
    };
    b.store.require_interaction(&client_id, &alice, requirement.clone()).await.expect(on);
    let unknown = b.store.interaction_required(&client_id, &alice, now).await.expect(on);
    assert_eq!(unknown, None, "{on}: nothing is recorded for a client that is not registered");

    add_client(b, &client_id).await;
    b.store.require_interaction(&client_id, &alice, requirement.clone()).await.expect(on);
    for look in 0..2 {
        let seen = b.store.interaction_required(&client_id, &alice, now).await.expect(on);
        assert_eq!(seen.as_ref(), Some(&requirement), "{on}: interaction_required does not consume (look {look})");
    }
    assert_eq!(b.store.interaction_required(&client_id, &bob, now).await.expect(on), None, "{on}: another person");
    assert_eq!(b.store.take_interaction(&client_id, &bob, now).await.expect(on), None, "{on}: nor takes it");
    let taken = b.store.take_interaction(&client_id, &alice, now).await.expect(on);
    assert_eq!(taken.as_ref(), Some(&requirement), "{on}: take_interaction returns it");
    assert_eq!(b.store.take_interaction(&client_id, &alice, now).await.expect(on), None, "{on}: taken once");
    assert_eq!(b.store.interaction_required(&client_id, &alice, now).await.expect(on), None, "{on}: consumed");

    b.store.require_interaction(&client_id, &bob, requirement.clone()).await.expect(on);
    let late = b.store.interaction_required(&client_id, &bob, now + 600).await.expect(on);
    assert_eq!(late, None, "{on}: a requirement is not live at its expiry");
    assert_eq!(b.store.take_interaction(&client_id, &bob, now + 600).await.expect(on), None, "{on}: nor taken");
}

contract_test!(an_interaction_requirement_waits_for_its_client_and_person_and_is_taken_once, interaction_contract);

// ---- 8. which client a credential belongs to -------------------------------------------------------------------

async fn token_client_contract(b: &Backend) {
    let on = b.name;
    let (coder, holder) = (fresh("client"), fresh("client"));
    let code = fresh("code");
    let hash = TokenHash::of(&code);
    b.store.issue_code(&code, code_for(&coder, "alice", b.now() + 600)).await.expect(on);
    assert_eq!(b.store.code_client(&hash).await.expect(on), Some(coder.clone()), "{on}: a live code's client");
    assert!(matches!(b.store.redeem_code(&code).await.expect(on), CodeRedemption::Taken(_)), "{on}");
    let grant = Grant::new(coder.clone(), vec![], None, login("alice"), b.now());
    b.store.start_grant(grant, hash, b.now() + 600).await.expect(on);
    assert_eq!(b.store.code_client(&hash).await.expect(on), Some(coder), "{on}: a spent code's client");
    assert_eq!(b.store.code_client(&TokenHash::of(&fresh("code"))).await.expect(on), None, "{on}: unknown code");

    let (grant, access) = granted(b, &holder, "alice").await;
    let (_, _, refresh) = new_family(b, &grant).await;
    assert_eq!(b.store.refresh_client(&refresh).await.expect(on), Some(holder.clone()), "{on}: refresh_client");
    assert_eq!(b.store.refresh_client(&access).await.expect(on), None, "{on}: an access token is no refresh token");
    assert_eq!(b.store.token_client(&refresh).await.expect(on), Some(holder.clone()), "{on}: token_client, refresh");
    assert_eq!(b.store.token_client(&access).await.expect(on), Some(holder), "{on}: token_client, access");
    assert_eq!(b.store.token_client(&fresh("token")).await.expect(on), None, "{on}: token_client, unknown");
}

contract_test!(code_refresh_and_token_lookups_name_the_client_the_credential_was_issued_to, token_client_contract);

// ---- 9. room for registrations ---------------------------------------------------------------------------------

async fn make_room_contract(b: &Backend) {
    let on = b.name;
    let make_room = |max: usize| async move { b.store.make_room_for_client(b.now(), 3600, max, 600).await.expect(on) };
    let exists = |id: String| async move { b.store.has_client(&id).await.expect(on) };
    assert_eq!(make_room(2).await, Some(0), "{on}: an empty table has room");

    let (used, signing, old, new) = (fresh("used"), fresh("signing"), fresh("old"), fresh("new"));
    add_client(b, &used).await;
    let client = b.store.client(&used).await.expect(on).unwrap_or_else(|| panic!("{on}: the used client"));
    b.store.client_authorized(&client, b.now()).await.expect(on);
    b.clock.advance(1);
    add_client(b, &signing).await;
    let client = b.store.client(&signing).await.expect(on).unwrap_or_else(|| panic!("{on}: the client signing in"));
    client.mark_sign_in(b.now());
    b.store.sign_in_started(&signing, 600).await.expect(on);
    // Every client is in use: no room. (Memory counts both against the cap of 1; Redis counts the one unused
    // registration, whose sign-in is in progress.)
    assert_eq!(make_room(1).await, None, "{on}: no room when every client of the full table is in use");
    assert!(exists(used.clone()).await && exists(signing.clone()).await, "{on}: nothing in use was evicted");

    for id in [&old, &new] {
        b.clock.advance(1);
        add_client(b, id).await;
    }
    let made = make_room(3).await;
    assert!(exists(used.clone()).await, "{on}: a client that was authorized is never evicted");
    assert!(exists(signing).await, "{on}: nor one whose sign-in started");
    assert!(!exists(old).await, "{on}: the oldest unused client is evicted first");
    // Documented difference: memory counts every client (4 against a cap of 3: two evicted), Redis only the
    // unused registrations (3 against 3: one evicted, the newest stays).
    let expected = if b.store.memory().is_some() { (Some(2), false) } else { (Some(1), true) };
    assert_eq!((made, exists(new).await), expected, "{on}: what was evicted, and whether the newest client stays");
}

contract_test!(making_room_for_a_client_evicts_the_oldest_unused_and_never_one_in_use, make_room_contract);

// ---- documented differences ------------------------------------------------------------------------------------

async fn backend_specific_contract(b: &Backend) {
    let on = b.name;
    assert!(b.store.readiness().await.0, "{on}: ready");
    let source = Source::of_ip([198, 51, 100, 7].into());
    let mut waits = Vec::new();
    for _ in 0..3 {
        waits.push(b.store.count_request(LimitClass::Token, source, 2).await.expect(on));
    }
    let (grant, _) = granted(b, &fresh("client"), "alice").await;
    grant.extend_to(b.now() + 3600);
    let tokens = UpstreamTokens::new("route-token", None, b.now() + 3600, None).expect("a header-safe token");
    grant.route_tokens.lock().expect("route tokens").insert("/files".into(), (b.now(), Arc::new(tokens)));
    b.store.share_route_token(&grant, "/files").await.expect(on);
    let shared = b.store.shared_route_token(&grant, "/files").await.expect(on);
    let shared = shared.map(|(at, t)| (at, t.access_token().to_owned()));
    if b.store.memory().is_some() {
        // Memory: the replica's own buckets limit; routes' tokens stay on the grant.
        assert_eq!((waits, shared), (vec![None, None, None], None), "{on}");
    } else {
        // Redis: the third request of the minute is over a limit of two; the route's token is shared.
        assert!(matches!(waits[..], [None, None, Some(1..=60)]), "{on}: {waits:?}");
        assert_eq!(shared, Some((b.now(), "route-token".to_owned())), "{on}");
    }
}

contract_test!(request_counting_and_route_token_sharing_are_redis_only_as_documented, backend_specific_contract);
