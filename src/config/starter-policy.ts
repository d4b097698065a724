/** The commented policy file `lessor init` writes: it grants nothing until you add a rule. */
export const STARTER_POLICY = `# lessor policy: who may lease which secret for which domains.
# Rules are checked in order; the first that matches decides; when none matches, access is denied.
# See docs/policy.md for every field.

# [defaults]
# ttl = "15m"          # lease lifetime
# max_ttl = "24h"      # renewals never go past this (above 24h only when written explicitly)
# renewable = true

# [[rule]]
# name = "claude-github"
# effect = "allow"
# agents = ["claude"]
# secrets = ["github-token"]          # "name" (scope global) or "scope/name"; * and ? are globs
# domains = ["api.github.com"]        # exact hosts or *.suffix
# ttl = "15m"
# max_uses = 100

# [[rule]]
# name = "nobody-gets-prod"
# effect = "deny"
# agents = ["*"]
# secrets = ["env:prod/*"]
`;
