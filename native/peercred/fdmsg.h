/*
 * fdmsg.h: the one message of lessor run's hand-over (netbridge.c sends it, handoff.c receives it):
 * one byte of data, with descriptors as SCM_RIGHTS ancillary data. Shared so both ends lay it out alike.
 */
#ifndef LESSOR_FDMSG_H
#define LESSOR_FDMSG_H
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Points `m` at the one byte `*byte` (through `iov`) and at `control` (`len` bytes, zeroed) for descriptors. */
static inline void fdmsg_init(struct msghdr *m, struct iovec *iov, char *byte, void *control, size_t len) {
  memset(control, 0, len);
  memset(m, 0, sizeof(*m));
  iov->iov_base = byte;
  iov->iov_len = 1;
  m->msg_iov = iov;
  m->msg_iovlen = 1;
  m->msg_control = control;
  m->msg_controllen = len;
}
#endif
