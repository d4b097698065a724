import assert from "node:assert/strict";
import { test } from "node:test";
import { isUuid, uuidv7 } from "../src/base/ids.js";

test("uuidv7: version 7, RFC variant, unique and ordered even within one millisecond", () => {
  const ids = Array.from({ length: 20_000 }, () => uuidv7(1_700_000_000_000));
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual([...ids].sort(), ids, "ids made in order sort in order");
  for (const id of ids.slice(0, 100)) {
    assert.ok(isUuid(id));
    assert.equal(id[14], "7");
    assert.ok("89ab".includes(id[19]!));
  }
  assert.ok(uuidv7(Date.now() + 10_000) > ids.at(-1)!);
  assert.ok(!isUuid("01890a5d-ac96-774b-bcce-b302099a805"), "too short");
  assert.ok(!isUuid("01890A5D-AC96-774B-BCCE-B302099A8057"), "upper case is not the canonical form");
});
