/**
 * Known credential formats: public prefixes that tools (and secret scanners) use to recognise a
 * credential. A placeholder keeps the prefix, so a tool that checks "does this look like a GitHub
 * token" accepts it; everything after the prefix is random (src/proxy/placeholder.ts). The sandbox
 * withholds a variable of the owner's whose value has one of these shapes (src/sandbox/env.ts).
 *
 * `separators` lists characters that are structure, not secret, in that format (the `_` between the
 * two parts of a fine-grained GitHub token, the `-` between a Slack token's numeric ids): a placeholder
 * keeps them where the value has them. Formats whose random part may contain such a character (base64url
 * bodies with `-` and `_`) declare none, so nothing about their body's layout is kept.
 */

/** One known format. */
export interface TokenFormat {
  /** What it is, for people. */
  readonly name: string;
  /** The public prefix, matched case-sensitively. */
  readonly prefix: string;
  /** Characters kept in place after the prefix (see the module comment). */
  readonly separators?: string;
  /** A fixed ending the format has (kept when the value has it), e.g. Anthropic keys end in `AA`. */
  readonly suffix?: string;
}

/** The formats, in no particular order: {@link knownFormat} takes the longest prefix that matches. */
export const TOKEN_FORMATS: readonly TokenFormat[] = [
  { name: "GitHub fine-grained personal access token", prefix: "github_pat_", separators: "_" },
  { name: "GitHub classic personal access token", prefix: "ghp_" },
  { name: "GitHub OAuth access token", prefix: "gho_" },
  { name: "GitHub user-to-server token", prefix: "ghu_" },
  { name: "GitHub server-to-server token", prefix: "ghs_" },
  { name: "GitHub refresh token", prefix: "ghr_" },
  { name: "GitLab personal access token", prefix: "glpat-" },
  { name: "GitLab deploy token", prefix: "gldt-" },
  { name: "GitLab runner token", prefix: "glrt-" },
  { name: "GitLab pipeline trigger token", prefix: "glptt-" },
  { name: "Anthropic API key", prefix: "sk-ant-api03-", suffix: "AA" },
  { name: "Anthropic admin key", prefix: "sk-ant-admin01-", suffix: "AA" },
  { name: "OpenAI project key", prefix: "sk-proj-" },
  { name: "OpenAI service account key", prefix: "sk-svcacct-" },
  { name: "OpenAI admin key", prefix: "sk-admin-" },
  { name: "OpenRouter key", prefix: "sk-or-v1-" },
  { name: "API secret key (sk-)", prefix: "sk-" },
  { name: "Stripe secret key (live)", prefix: "sk_live_" },
  { name: "Stripe secret key (test)", prefix: "sk_test_" },
  { name: "Stripe restricted key (live)", prefix: "rk_live_" },
  { name: "Stripe restricted key (test)", prefix: "rk_test_" },
  { name: "Stripe webhook signing secret", prefix: "whsec_" },
  { name: "Slack bot token", prefix: "xoxb-", separators: "-" },
  { name: "Slack user token", prefix: "xoxp-", separators: "-" },
  { name: "Slack workspace token", prefix: "xoxa-", separators: "-" },
  { name: "Slack workspace token (v2)", prefix: "xoxa-2-", separators: "-" },
  { name: "Slack refresh token", prefix: "xoxe-", separators: "-" },
  { name: "Slack refresh token (v1)", prefix: "xoxe-1-", separators: "-" },
  { name: "Slack rotating user token", prefix: "xoxe.xoxp-1-", separators: "-" },
  { name: "Slack rotating bot token", prefix: "xoxe.xoxb-1-", separators: "-" },
  { name: "Slack app-level token", prefix: "xapp-", separators: "-" },
  { name: "Slack app-level token (v1)", prefix: "xapp-1-", separators: "-" },
  { name: "AWS access key id", prefix: "AKIA" },
  { name: "AWS temporary access key id", prefix: "ASIA" },
  { name: "Google API key", prefix: "AIza" },
  { name: "npm access token", prefix: "npm_" },
  { name: "PyPI API token", prefix: "pypi-" },
  { name: "PyPI API token (pypi.org)", prefix: "pypi-AgEIcHlwaS5vcmc" },
  { name: "Hugging Face token", prefix: "hf_" },
  { name: "Docker Hub personal access token", prefix: "dckr_pat_" },
  { name: "DigitalOcean personal access token", prefix: "dop_v1_" },
  { name: "Shopify access token", prefix: "shpat_" },
  { name: "Linear API key", prefix: "lin_api_" },
  { name: "SendGrid API key", prefix: "SG.", separators: "." },
  { name: "Groq API key", prefix: "gsk_" },
  { name: "xAI API key", prefix: "xai-" },
  { name: "HashiCorp Vault service token", prefix: "hvs." },
];

/** The known format whose prefix `value` starts with (the longest such prefix), if any. */
export function knownFormat(value: string): TokenFormat | undefined {
  let best: TokenFormat | undefined;
  for (const f of TOKEN_FORMATS) if (value.startsWith(f.prefix) && (!best || f.prefix.length > best.prefix.length)) best = f;
  return best;
}
