/** `lessor policy check|explain|reload`. See docs/cli/admin.md and docs/policy.md. */
import type { Command } from "commander";
import type { Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { list } from "../format/table.js";
import type { Rule } from "../../vault/policy.js";

/** A rule as printed by `policy check --json`: durations as text ("15m"). */
interface RuleJson {
  index: number;
  name: string;
  effect: "allow" | "deny";
  agents: string[];
  secrets: string[];
  domains: string[];
  anyDomain: boolean;
  methods: string[] | null;
  paths: string[] | null;
  /** Whether an access may hand the value to the agent (null on deny rules); false: proxy only. */
  reveal: boolean | null;
  ttl: string | null;
  maxTtl: string | null;
  maxUses: number | null;
  renewable: boolean | null;
  maxRenewals: number | null;
  /** Present (as "required") only on rules that need a person's approval. */
  approval?: "required";
}

function ruleJson(r: Rule, fmt: (ms: number) => string): RuleJson {
  const allow = r.effect === "allow";
  return {
    index: r.index,
    name: r.name,
    effect: r.effect,
    agents: [...r.agents],
    secrets: [...r.secrets],
    domains: [...r.domains],
    anyDomain: r.anyDomain,
    methods: r.methods === null ? null : [...r.methods],
    paths: r.paths === null ? null : [...r.paths],
    reveal: allow ? r.reveal : null,
    ttl: allow ? fmt(r.terms.ttlMs) : null,
    maxTtl: allow ? fmt(r.terms.maxTtlMs) : null,
    maxUses: allow ? r.terms.maxUses : null,
    renewable: allow ? r.terms.renewable : null,
    maxRenewals: allow ? r.terms.maxRenewals : null,
    ...(r.approval === "required" ? { approval: "required" as const } : {}),
  };
}

function ruleLine(r: RuleJson): string {
  let s = `${r.index}. ${r.name}: ${r.effect} agents ${list(r.agents)} secrets ${list(r.secrets)}`;
  if (r.effect === "allow") {
    s += ` domains ${r.anyDomain ? "any" : list(r.domains)}`;
    if (r.methods !== null) s += ` methods ${list(r.methods)}`;
    if (r.paths !== null) s += ` paths ${list(r.paths)}`;
    if (r.reveal === false) s += " proxy only (reveal = false)";
    s += ` ttl ${r.ttl} max_ttl ${r.maxTtl}`;
    if (r.maxUses !== null) s += ` max_uses ${r.maxUses}`;
    s += r.renewable ? (r.maxRenewals !== null ? ` renewable (${r.maxRenewals} times)` : " renewable") : " not renewable";
    if (r.approval === "required") s += " approval required";
  }
  return s;
}

/** The policy file named by the home's lessor.toml (policy.toml unless it says otherwise). */
async function homePolicyPath(cli: Cli): Promise<string> {
  const { inHome, resolveHome } = await import("../../config/home.js");
  const { loadConfig } = await import("../../config/load.js");
  const home = resolveHome(cli.home);
  return inHome(home, loadConfig(home).policyFile);
}

export function registerPolicy(program: Command, cli: Cli): void {
  const policy = program
    .command("policy")
    .description("check, explain and reload the access policy")
    .addHelpText("after", "\nExamples:\n  lessor policy check\n  lessor policy explain --agent claude --secret github-token --domain api.github.com\n  lessor policy reload");

  policy
    .command("check [file]")
    .description("parse a policy file (default: the home's) and summarise its rules; exit 2 when it is invalid (no vault needed)")
    .option("--json", "print { ok, source, digest, rules } (or { ok: false, source, error }) as JSON")
    .addHelpText("after", "\nExamples:\n  lessor policy check\n  lessor policy check ./policy.toml --json")
    .action((file: string | undefined, o: { json?: boolean }) =>
      cli.run(async () => {
        const { readTrustedText } = await import("../../fs/trusted-file.js");
        const { resolve } = await import("node:path");
        const { parsePolicy } = await import("../../vault/policy.js");
        const { formatDuration } = await import("../../vault/duration.js");
        const { VaultError } = await import("../../base/errors.js");
        const source = file === undefined ? await homePolicyPath(cli) : resolve(file);
        try {
          let text: string;
          try {
            text = readTrustedText(source, "the policy file", "policy_invalid");
          } catch (e) {
            if (e instanceof VaultError) throw e;
            const code = (e as NodeJS.ErrnoException).code ?? "error";
            throw new VaultError(
              "policy_invalid",
              code === "ENOENT" ? `the policy file ${source} does not exist; give a path, or run lessor init to create one` : `cannot read the policy file ${source} (${code})`,
            );
          }
          const p = parsePolicy(text, source);
          const rules = p.rules.map((r) => ruleJson(r, formatDuration));
          if (o.json) {
            cli.json({ ok: true, source, digest: p.digest, rules });
            return;
          }
          cli.out(`${source}: valid, ${rules.length} rule${rules.length === 1 ? "" : "s"}, digest ${p.digest}`);
          if (rules.length === 0) cli.out("  no rules: every lease is denied until you add an allow rule");
          for (const r of rules) cli.out(`  ${ruleLine(r)}`);
        } catch (e) {
          if (o.json && e instanceof VaultError) cli.json({ ok: false, source, error: e.message });
          throw e;
        }
      }),
    );

  policy
    .command("explain")
    .description("say which rule decides whether an agent may lease a secret (for a domain), and every rule checked on the way")
    .requiredOption("--agent <agent>", "the agent asking")
    .requiredOption("--secret <name>", "the secret (scope/name or a bare name)")
    .option("--domain <host>", "the host the credential would be used for")
    .option("--json", "print { allow, rule, reason, steps, policy } as JSON (policy: the version that answered)")
    .addHelpText("after", "\nExamples:\n  lessor policy explain --agent claude --secret github-token --domain api.github.com\n  lessor policy explain --agent ci --secret env:prod/db --json")
    .action((o: { agent: string; secret: string; domain?: string; json?: boolean }) =>
      cli.run(async () => {
        const { api } = await cli.backend();
        const x = await api.explain(o.agent, o.secret, o.domain);
        if (o.json) {
          cli.json(x);
          return;
        }
        cli.out(`${x.allow ? "allow" : "deny"}: ${x.reason}`);
        // An agent sees only the rules naming it (src/vault/own-access.ts), so none may be shown.
        if (x.steps.length === 0 && x.policy?.state !== "broken") cli.out("  (no rule of the policy applies to this agent)");
        for (const s of x.steps) cli.out(`  rule ${s.index} ${JSON.stringify(s.rule)} (${s.effect}): ${s.matched ? "matches" : "skipped"}: ${s.why}`);
        if (!x.allow && x.rule === null && x.steps.length > 0) cli.out("  no rule matched: lessor denies by default");
        const { policyVersionText } = await import("../format/policy-version.js");
        if (x.policy !== undefined) cli.out(`  answered by policy version ${policyVersionText(x.policy)}`);
      }),
    );

  policy
    .command("reload")
    .description("re-read the policy file (in the running daemon, or check it loads in embedded mode); prints rule count and digest; a file that does not load exits 2 and the daemon then denies every lease until it is fixed and reloaded")
    .option("--json", "print { mode, rules, digest } as JSON")
    .addHelpText("after", "\nExamples:\n  lessor policy reload\n  lessor policy reload --json")
    .action((o: { json?: boolean }) =>
      cli.run(async () => {
        const backend = await cli.backend();
        const r = await backend.api.reloadPolicy();
        if (o.json) cli.json({ mode: backend.mode, rules: r.rules, digest: r.digest });
        else cli.out(`policy reloaded (${backend.mode === "daemon" ? "daemon" : "embedded vault"}): ${r.rules} rule${r.rules === 1 ? "" : "s"}, digest ${r.digest}`);
        return EXIT.ok;
      }),
    );
}
