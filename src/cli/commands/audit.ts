/** `lessor audit` (not built yet). */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerAudit(_program: Command, _cli: Cli): void {}
