/**
 * A placeholder in the URL of a request to a host its lease covers. lessor replaces placeholders in
 * headers (and in bodies or frames when the rule says so), never in the URL, so such a request would
 * reach the upstream with the placeholder and fail there, after spending one use of the lease. The
 * proxy refuses it instead (403 naming what to do), before the vault is asked: no use is spent and
 * nothing goes upstream. The same placeholder in a header works, and takes one use.
 */
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";
import * as https from "node:https";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { makeVault } from "./helpers.js";
import { getThroughTunnel, loopbackOnly, tableResolver } from "./proxy-harness.js";

const HOST = "api.url.example";
const TOK = "ghp_" + "UrLpLaCeHoLdEr0123456789abcdefABCDEFgh".slice(0, 36);

describe("a placeholder in the URL of a covered host", () => {
  const upCa = LocalCa.create({ permitted: [HOST] });
  const seen: string[] = [];
  const up = https.createServer({ SNICallback: upCa.sniCallback, secureContext: upCa.secureContextFor(HOST) }, (req, res) => {
    seen.push(`${req.url} ${String(req.headers.authorization ?? "")}`);
    res.writeHead(req.headers.authorization === `Bearer ${TOK}` ? 200 : 401, { "content-type": "text/plain" });
    res.end("ok\n");
  });
  const listening = new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
  after(() => new Promise<void>((r) => up.close(() => r())));

  test("is refused with what to do, before any use; in a header it is replaced and takes one use", async () => {
    await listening;
    const upPort = (up.address() as AddressInfo).port;
    const { vault } = await makeVault({ policy: `[[rule]]\nname = "api"\neffect = "allow"\nagents = ["bot"]\nsecrets = ["tok"]\ndomains = ["${HOST}"]\n` });
    const admin = vault.admin();
    await admin.storeSecret({ name: "tok", value: TOK });
    const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST] });
    const ph = makePlaceholder(TOK);
    const cred: ProxyCredential = { lease, secret: "global/tok", placeholder: ph, value: TOK, rule: { mode: "placeholder" } };
    const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: [cred], egress: "strict" });
    const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
    const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly([]) });
    const port = await proxy.listen();
    const uses = async (): Promise<number> => (await admin.listLeases({ agent: "bot" })).find((l) => l.id === lease.id)!.uses;
    try {
      const before = await uses();
      for (const path of [`/v1/things?key=${ph}`, `/v1/${ph}/things`]) {
        const answer = await getThroughTunnel(port, HOST, upPort, path, "not-the-placeholder");
        assert.match(answer, /^HTTP\/1\.1 403 /, answer);
        assert.match(answer, /is in the URL, where lessor does not replace it/);
        assert.match(answer, /mode = \\?"query\\?"/);
        assert.ok(!answer.includes(TOK), "the value never goes back to the agent");
      }
      assert.deepEqual(seen, [], "nothing went upstream");
      assert.equal(await uses(), before, "no use was spent");

      const ok = await getThroughTunnel(port, HOST, upPort, "/v1/things", ph);
      assert.match(ok, /^HTTP\/1\.1 200 /, ok);
      assert.equal(await uses(), before + 1, "the request in a header took one use");
      assert.deepEqual(seen, [`/v1/things Bearer ${TOK}`]);
    } finally {
      await proxy.close();
      await egress.close();
      await vault.close();
    }
  });
});
