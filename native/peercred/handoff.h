/* handoff.c: adds socketpair() and recvfd() to the addon's exports; returns 0 on failure. */
#ifndef LESSOR_HANDOFF_H
#define LESSOR_HANDOFF_H
#include <node_api.h>
int register_handoff(napi_env env, napi_value exports);
#endif
