//! Documented input limits (README "API limits"). Every RPC checks them
//! before doing any work.

/// Longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest client name shown on the phone, in bytes.
pub const MAX_CLIENT_NAME_LEN: usize = 128;
/// Longest payee, in bytes.
pub const MAX_PAYEE_LEN: usize = 128;
/// Longest location, in bytes.
pub const MAX_LOCATION_LEN: usize = 128;
/// Longest binding message, in bytes.
pub const MAX_BINDING_MESSAGE_LEN: usize = 256;
/// Longest IP address text, in bytes.
pub const MAX_IP_LEN: usize = 45;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest push token, in bytes (FCM tokens are about 160, APNs 64 hex).
pub const MAX_PUSH_TOKEN_LEN: usize = 4096;
/// Longest device display name, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 64;
pub const MAX_TENANT_NAME_LEN: usize = 200;
pub const MAX_CLIENT_IDENTITY_LEN: usize = 512;
/// Live (active or rotated-out) API keys one tenant may hold at once.
pub const MAX_LIVE_API_KEYS_PER_TENANT: usize = 10;
/// Largest public key, in bytes (DER SPKI of P-256 is 91).
pub const MAX_PUBLIC_KEY_LEN: usize = 256;
/// Largest signature, in bytes (DER ECDSA P-256 is at most 72).
pub const MAX_SIGNATURE_LEN: usize = 256;
/// Most active devices one user may enroll.
pub const MAX_DEVICES_PER_USER: usize = 16;

/// Challenge time-to-live bounds, in seconds.
pub const DEFAULT_CHALLENGE_TTL_SECS: u32 = 120;
pub const MIN_CHALLENGE_TTL_SECS: u32 = 1;
pub const MAX_CHALLENGE_TTL_SECS: u32 = 600;

/// Enrollment token time-to-live bounds, in seconds.
pub const DEFAULT_ENROLLMENT_TTL_SECS: u32 = 600;
pub const MAX_ENROLLMENT_TTL_SECS: u32 = 3600;

/// How far a device's clock may be from the server's, in milliseconds.
pub const MAX_CLOCK_SKEW_MS: i64 = 60_000;
