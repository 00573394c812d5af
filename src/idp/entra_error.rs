//! Entra ID's refusals sorted into what the proxy does about them (issue 16 §1; RFC 6749 §5.2, §4.1.2.1).
//!
//! [`classify`] reads an Entra error answer — HTTP status, `error`, the AADSTS code (from `error_codes` or the
//! `AADSTS…:` prefix of `error_description`) and `suberror` — and names its [`ErrorFamily`]:
//!
//! | family | what it means | effect |
//! |---|---|---|
//! | [`ErrorFamily::GrantEnded`] | the refresh token or code is dead (expired, revoked, password changed, sign-in frequency) | the grant ends; the client's next request gets 401 `invalid_token` |
//! | [`ErrorFamily::InteractionRequired`] | MFA, Conditional Access or a compliant device is needed | the grant ends; the client's next sign-in forwards `prompt=login` or Entra's `claims`, and the person is told what the organisation requires |
//! | [`ErrorFamily::AdminConsent`] | the app registration lacks (admin) consent for the scopes | an error page for the person, one log line for the operator with the app registration and scopes |
//! | [`ErrorFamily::Unavailable`] | throttled (429, AADSTS50196) or Entra down (5xx, `temporarily_unavailable`) | 503 with `Retry-After`; the grant is kept |
//! | [`ErrorFamily::Other`] | anything else (`invalid_client`: the proxy's own secret, a malformed request) | as before: the operator's log, a generic error |
//!
//! Meanings of the codes, from Microsoft's error reference (`reference-error-codes.md`, learn.microsoft.com
//! /entra/identity-platform/reference-error-codes) and the pages it links:
//! - 70008 "the provided authorization code or refresh token has expired due to inactivity"; 700082 "the refresh
//!   token has expired due to inactivity" (90 days); 700084 SPA refresh token past its 24 h; 50173 "the provided
//!   grant has expired due to it being revoked, a fresh auth token is needed" (revoke sessions, password reset);
//!   70043 / 70044 "the refresh token has expired or is invalid due to sign-in frequency checks by conditional
//!   access" / "the session has expired or is invalid due to sign-in frequency checks by conditional access";
//!   50133 session invalid after a password expiry or change; 50089 flow token expired. `suberror=bad_token`.
//! - 50076 / 50079 "due to a configuration change made by your administrator, or because you moved to a new
//!   location, you must use multi-factor authentication" / "must enroll in MFA"; 50074 strong authentication
//!   required; 50072 MFA enrollment; 50158 external security challenge not satisfied; 53000 "device is not in
//!   required device state" (compliant), 53001 domain-joined device required, 530003 "your device is required to
//!   be managed to access this resource", 50097 device authentication required, 50129 workplace join required;
//!   53003 "access has been blocked by Conditional Access policies". Also `error=interaction_required` /
//!   `login_required` and `suberror=basic_action` (MSAL's reading of the same answers).
//! - 65001 "the user or administrator has not consented to use the application … send an interactive
//!   authorization request for this user and resource"; 90094 / 90095 "admin consent is required for the
//!   permissions requested by this application" (the admin consent workflow).
//! - 50196 "the server terminated an operation because it encountered a client request loop" (Microsoft's
//!   throttling of user flows, AZURE.md §7); HTTP 429 with `Retry-After`; 5xx.
//!
//! Microsoft warns that AADSTS numbers change: `error` decides first where it is unambiguous
//! (`temporarily_unavailable`, `interaction_required`, `consent_required`), and an `invalid_grant` with an unknown
//! code still ends the grant (RFC 6749 §5.2: the grant is invalid). The proxy never answers any family by forcing
//! `prompt=consent`: that would ask for (admin) consent on every connect.

use serde::{Deserialize, Serialize};

/// What an Entra refusal means for the grant and the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorFamily {
    GrantEnded,
    InteractionRequired,
    AdminConsent,
    Unavailable,
    Other,
}

impl ErrorFamily {
    /// The metric label (`dcr_proxy_idp_errors_total{kind}`).
    pub fn label(self) -> &'static str {
        match self {
            Self::GrantEnded => "grant_ended",
            Self::InteractionRequired => "interaction_required",
            Self::AdminConsent => "admin_consent",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }

    /// Whether the proxy's grant must end (the client signs in again).
    pub fn ends_grant(self) -> bool {
        matches!(self, Self::GrantEnded | Self::InteractionRequired | Self::AdminConsent)
    }
}

const GRANT_ENDED: &[u64] = &[70008, 700082, 700084, 50173, 70043, 70044, 50133, 50089];
const INTERACTION: &[u64] = &[50076, 50079, 50074, 50072, 50158, 53000, 53001, 53003, 530003, 50097, 50129];
const ADMIN_CONSENT: &[u64] = &[65001, 90094, 90095];
const THROTTLED: &[u64] = &[50196];

/// The family of an Entra error answer.
pub fn classify(status: u16, error: &str, aadsts: Option<u64>, suberror: Option<&str>) -> ErrorFamily {
    let code_in = |list: &[u64]| aadsts.is_some_and(|c| list.contains(&c));
    if status == 429 || status >= 500 || matches!(error, "temporarily_unavailable" | "server_error") {
        return ErrorFamily::Unavailable;
    }
    if code_in(THROTTLED) {
        return ErrorFamily::Unavailable;
    }
    if code_in(ADMIN_CONSENT) || error == "consent_required" {
        return ErrorFamily::AdminConsent;
    }
    if code_in(INTERACTION)
        || matches!(error, "interaction_required" | "login_required")
        || suberror == Some("basic_action")
    {
        return ErrorFamily::InteractionRequired;
    }
    if code_in(GRANT_ENDED) || error == "invalid_grant" || suberror == Some("bad_token") {
        return ErrorFamily::GrantEnded;
    }
    ErrorFamily::Other
}

/// What to tell the person about an interaction Entra requires, by AADSTS code (Microsoft's error reference).
pub fn requirement_text(aadsts: Option<u64>) -> &'static str {
    match aadsts {
        Some(70043 | 70044) => {
            "Your organisation requires you to sign in again regularly (a sign-in frequency policy). Sign in again \
             with your password and any verification step your organisation asks for."
        }
        Some(50133 | 50173) => {
            "Your organisation ended your earlier session (a password change or a revoked session). Sign in again \
             with your current password."
        }
        Some(50076 | 50079 | 50074 | 50072) => {
            "Your organisation requires multi-factor authentication for this sign-in. Sign in again and complete \
             the verification step your organisation asks for."
        }
        Some(53000 | 53001 | 530003 | 50097 | 50129) => {
            "Your organisation allows this sign-in only from a managed or compliant device. Sign in again from a \
             device your organisation manages, or ask your IT department to register this one."
        }
        Some(53003) => {
            "Your organisation's Conditional Access policy blocks this sign-in (for example from this location or \
             device). Ask your IT department which conditions apply."
        }
        _ => "Your organisation requires you to sign in again and complete an additional verification step.",
    }
}

/// Whether Entra ended a grant because the person must sign in afresh, not just again: sign-in frequency
/// (70043, 70044), a session ended by a password change or revocation (50133, 50173). The next sign-in must send
/// `prompt=login`, or Entra's single sign-on would reuse the session it just refused.
pub fn needs_fresh_sign_in(aadsts: Option<u64>) -> bool {
    matches!(aadsts, Some(70043 | 70044 | 50133 | 50173))
}

/// The AADSTS code at the start of an Entra `error_description` (`AADSTS70008: …`).
pub fn aadsts_from_description(d: Option<&str>) -> Option<u64> {
    let rest = d?.trim_start().strip_prefix("AADSTS")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorFamily as F;

    #[test]
    fn each_documented_code_falls_in_its_family() {
        for code in [70008, 700082, 700084, 50173, 70043, 70044, 50133] {
            assert_eq!(classify(400, "invalid_grant", Some(code), None), F::GrantEnded, "{code}");
        }
        for code in [50076, 50079, 53003, 530003, 53000] {
            assert_eq!(classify(400, "invalid_grant", Some(code), Some("basic_action")), F::InteractionRequired);
            assert_eq!(classify(400, "invalid_grant", Some(code), None), F::InteractionRequired, "{code}");
        }
        for code in [65001, 90094] {
            assert_eq!(classify(400, "invalid_grant", Some(code), None), F::AdminConsent, "{code}");
        }
        assert_eq!(classify(400, "invalid_grant", Some(50196), None), F::Unavailable);
    }

    #[test]
    fn error_and_status_decide_when_the_code_is_unknown_or_missing() {
        assert_eq!(classify(429, "", None, None), F::Unavailable);
        assert_eq!(classify(503, "invalid_grant", Some(70008), None), F::Unavailable, "5xx is never final");
        assert_eq!(classify(400, "temporarily_unavailable", None, None), F::Unavailable);
        assert_eq!(classify(400, "interaction_required", Some(1234567), None), F::InteractionRequired);
        assert_eq!(classify(400, "consent_required", None, None), F::AdminConsent);
        assert_eq!(classify(400, "invalid_grant", Some(9999999), None), F::GrantEnded);
        assert_eq!(classify(400, "invalid_grant", None, Some("basic_action")), F::InteractionRequired);
        assert_eq!(classify(401, "invalid_client", Some(7000215), None), F::Other);
        assert_eq!(classify(400, "access_denied", Some(65004), None), F::Other, "the user declined");
    }

    #[test]
    fn only_families_that_need_a_new_sign_in_end_the_grant() {
        assert!(F::GrantEnded.ends_grant() && F::InteractionRequired.ends_grant() && F::AdminConsent.ends_grant());
        assert!(!F::Unavailable.ends_grant() && !F::Other.ends_grant());
    }

    #[test]
    fn aadsts_code_is_read_from_description() {
        assert_eq!(aadsts_from_description(Some("AADSTS70008: The provided grant has expired")), Some(70008));
        assert_eq!(aadsts_from_description(Some("nope")), None);
        assert!(requirement_text(Some(50076)).contains("multi-factor"));
        assert!(requirement_text(Some(530003)).contains("device"));
    }
}
