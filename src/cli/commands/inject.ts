/** `lessor inject` (not built yet). */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerInject(_program: Command, _cli: Cli): void {}
