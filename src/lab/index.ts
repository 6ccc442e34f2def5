/**
 * The lab: several Haven hosts on one machine, each a network namespace and
 * a mount namespace with its own agent and disk, meeting on one bridge, with
 * a controller and a client beside them, and faults on demand.
 *
 * @example
 * ```ts
 * import { labUp, labStatus, labPartition, labHeal, labDown } from './lab/index.js';
 * await labUp(3);
 * const status = labStatus(); // { up: true, hosts: [{ name: 'h1', address: '10.88.0.11', … }], … }
 * await labPartition('h2');
 * await labHeal('h2');
 * await labDown();
 * ```
 */
export {
  UP_STAGES,
  checkHostCount,
  labDashboardLogin,
  labDown,
  labExecArgv,
  labHeal,
  labKillHost,
  labPartition,
  labRevive,
  labSetEtcdMember,
  labShape,
  labStatus,
  labUp,
  labWaitReady,
  type LabHostStatus,
  type LabStatus,
  type UpStage,
} from './lab.js';
export {
  AGENT_PORT,
  BRIDGE,
  BRIDGE_NETNS,
  CLIENT_ADDRESS,
  CLIENT_NETNS,
  CONTROLLER_ADDRESS,
  CONTROLLER_NETNS,
  CONTROLLER_URL,
  DASHBOARD_PORT,
  DASHBOARD_URL,
  HOST_VIEW,
  LAB_CGROUP,
  LAB_PATHS,
  MAX_HOSTS,
  bridgeLink,
  hostAddress,
  hostCgroup,
  hostNames,
  hostNetns,
} from './paths.js';
export { readSupervisorStatus, type SupervisorStatus } from './state.js';
