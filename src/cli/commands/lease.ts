/** `lessor lease` (not built yet). */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerLease(_program: Command, _cli: Cli): void {}
