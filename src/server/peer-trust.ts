/**
 * What the daemon may conclude about a Unix-socket peer, decided once at start from whether peer
 * credentials (SO_PEERCRED) can be read, the socket's mode and the `[[identity]]` entries.
 *
 * lessor never guesses an identity. With peer credentials every peer is its uid, mapped by
 * `[[identity]]` (the daemon's own uid is admin). Without them:
 * - a socket with any group or other permission bit, or any `[[identity]]` entry, means other uids are meant to connect and
 *   could not be told apart from the owner: the daemon refuses to start, saying how to build the addon;
 * - an owner-only socket (0600) with no `[[identity]]` entries is reachable only by its owner (and root): connect()
 *   on a Unix socket needs write permission on the socket file, which the kernel checks, and the
 *   listener verifies the file is exactly that mode and owned by the daemon's uid. Only then is a peer
 *   without credentials taken for the owner, and the daemon logs that it does so.
 * A single connection whose credentials cannot be read while the addon works gets no uid identity.
 */
import type { UidIdentity } from "../config/config.js";
import { VaultError } from "../base/errors.js";
import { buildScript, defaultAddonPath, type PeerCredLoader } from "../native/peercred.js";

/** The decision, handed to the authenticator. */
export interface PeerTrust {
  /** Whether a Unix-socket peer without credentials is the owner (true only in the owner-only case above). */
  ownerWithoutPeerCred: boolean;
  /** A warning for the start-up log when the owner-only fallback is in force; null otherwise. */
  warning: string | null;
}

/** What the decision depends on. */
export interface PeerTrustInput {
  peercred: PeerCredLoader;
  /** Mode the Unix socket is created with (`[server] socket_mode`). */
  socketMode: number;
  identities: readonly UidIdentity[];
  /** Where the configuration came from, for messages (the lessor.toml path). */
  configPath: string;
  /** The addon path looked at, for the build hint (default: the package's own). */
  addonPath?: string;
}

/**
 * Decides how far Unix-socket peers are trusted; throws `config_invalid` when the configuration needs
 * peer credentials that are unavailable.
 */
export function decidePeerTrust(input: PeerTrustInput): PeerTrust {
  const { peercred } = input;
  if (peercred.available) return { ownerWithoutPeerCred: false, warning: null };
  const wide = (input.socketMode & 0o077) !== 0; // group or other bits: someone besides the owner may connect
  const mapped = input.identities.length > 0;
  if (wide || mapped) {
    const why = [
      wide ? `socket_mode is "0${(input.socketMode & 0o777).toString(8)}", so other users can connect` : null,
      mapped ? `${input.identities.length} [[identity]] ${input.identities.length === 1 ? "entry maps" : "entries map"} other uids` : null,
    ]
      .filter((x) => x !== null)
      .join(" and ");
    const script = buildScript(input.addonPath ?? defaultAddonPath() ?? "");
    throw new VaultError(
      "config_invalid",
      `refusing to start: ${input.configPath}: ${why}, but peer credentials are unavailable (${peercred.reason}), ` +
        `so the daemon could not tell who connects. Build the addon with: node ${script} ` +
        `(needs python3, make and a C compiler; see native/peercred/README.md), or set socket_mode = "0600" and remove the [[identity]] entries to serve only yourself.`,
    );
  }
  return {
    ownerWithoutPeerCred: true,
    warning:
      `peer credentials are unavailable (${peercred.reason}); the socket is 0600 and no [[identity]] is configured, ` +
      "so only its owner (and root) can connect, and every Unix-socket client is taken for the owner. " +
      "Build the addon before widening socket_mode or adding [[identity]] entries (the daemon refuses to start otherwise).",
  };
}
